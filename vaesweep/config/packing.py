"""Pack rules: which trial configurations may train together in one Ray trial (vaesweep/engine/packing.py).

A pack is K configurations of one architecture trained in one set of batched kernels; they may
differ only in ``PACK_VARIES``. ``pack: auto | K | off`` in a study: auto packs 16 when trials
get a GPU and the study can pack (grid search, no scheduler, a packable experiment kind such as train,
no two-stage, no conv trials on a CPU).
"""

from __future__ import annotations

from pydantic import ValidationError

from vaesweep.config.errors import PackError, SpecError
from vaesweep.config.trial import TrialConfig, one_line

# Fields that may differ between the configurations of one pack; all others must be equal.
PACK_VARIES = frozenset(
    {
        "lam",
        "warmup_steps",
        "free_bits",
        "capacity_max",
        "capacity_steps",
        "gamma",
        "seed",
        "latent_dim",
        "active_threshold",
        "law_tol",
        "mu_tol",
        "settle_patience",
        "settle_min_steps",
        "settle_law_tol",
        "stop_when",
        "stop_min_steps",
    }
)


PACK_KEY = "_pack"  # param_space key of a packed trial: the list of its configurations


GPU_PACK = 16  # pack: auto on a GPU
CONV_PACK_SLOWDOWN = "1.8-2.2x"  # packed conv trials on one CPU thread against TrialRun's channels_last loop


def check_packable(cfgs: list[TrialConfig]) -> None:
    """Raise PackError naming the first field outside PACK_VARIES on which the configs differ."""
    if not cfgs:
        raise PackError("pack: no configurations; give at least one")
    first = cfgs[0].model_dump()
    for cfg in cfgs[1:]:
        for key, value in cfg.model_dump().items():
            if key not in PACK_VARIES and value != first[key]:
                raise PackError(
                    f"pack: configurations differ in '{key}' ({first[key]!r} vs {value!r}); only "
                    f"{', '.join(sorted(PACK_VARIES))} may differ within a pack"
                )


def shared_key(cfg: TrialConfig) -> tuple:
    """What configurations must have in common to share a pack."""
    return tuple((k, repr(v)) for k, v in cfg.model_dump().items() if k not in PACK_VARIES)


def packed_id(trial_id: str, i: int) -> str:
    """The study's trial id of configuration ``i`` of the packed Ray trial ``trial_id``."""
    return f"{trial_id}-p{i}"


def pack_configs(config: dict) -> list[dict]:
    """The K trial configs of a packed param_space entry: shared keys plus each ``_pack`` item."""
    shared = {k: v for k, v in config.items() if not k.startswith("_")}
    return [{**shared, **item} for item in config[PACK_KEY]]


def pack_size(spec) -> int:
    """Configurations per Ray trial for a StudySpec: ``pack: off`` -> 1, an int -> that, ``auto`` ->
    GPU_PACK when the trials get a GPU (resources.gpu > 0, device not cpu) and the study can pack
    (grid search, no scheduler, a packable kind), else 1."""
    pack = getattr(spec, "pack", "off")
    if pack == "off":
        return 1
    if pack != "auto":
        return int(pack)
    gpu = spec.resources.gpu  # "auto" only before run_study resolves it against the cluster
    on_gpu = gpu != "auto" and gpu > 0 and spec.trial_base().get("device", "auto") != "cpu"
    return GPU_PACK if on_gpu and pack_problem(spec) is None else 1


def pack_problem(spec) -> str | None:
    """Why this study cannot pack (one line naming the field), or None."""
    if not spec.kind.packable:
        return f"pack: the {spec.experiment} experiment trains one model per trial; set pack: off"
    if spec.search.type != "grid":
        return (
            f"pack: search.type {spec.search.type} picks each trial after the last; use search: {{type: grid}} "
            "or pack: off"
        )
    if spec.scheduler is not None:
        return "pack: a scheduler stops trials one by one, a pack stops together; remove scheduler or set pack: off"
    if "conv" in spec.trial_values("arch") and _on_cpu(spec):
        return (
            "pack: conv trials on a CPU train slower packed (vmap makes their convolutions grouped ones: "
            f"{CONV_PACK_SLOWDOWN} the time of one trial after another, benchmarks/results/throughput_conv.md); "
            "set pack: off, or give trials a GPU (resources.gpu)"
        )
    two_stage = spec.space.get("two_stage")
    if spec.trial_base().get("two_stage") or (two_stage is not None and True in getattr(two_stage, "grid", [])):
        return "pack: packed trials do not train the two-stage VAE (two_stage: true); set pack: off"
    return None


def _on_cpu(spec) -> bool:
    """Whether the study's trials surely train on a CPU (gpu: auto is settled only when the study runs)."""
    gpu = spec.resources.gpu
    return spec.trial_base().get("device", "auto") == "cpu" or (gpu != "auto" and gpu == 0)


def grid_configs(spec) -> list[dict]:
    """Every trial config of a grid study (base, grid values, seed), as Ray's grid would run them."""
    base = {"threads": max(1, int(spec.resources.cpu)), **spec.trial_base()}
    return [{**base, **setting} for setting in spec.settings()]  # num_samples repeats the packs


def make_packs(configs: list[dict], k: int) -> list[list[dict]]:
    """Group configs that can share a pack (same ``shared_key``), by latent dimension, into packs of <= k."""
    groups: dict[tuple, list[dict]] = {}
    for c in configs:
        try:
            cfg = TrialConfig(**c)
        except ValidationError as err:
            raise SpecError(one_line(err, prefix="space: a grid point is not a valid trial: ")) from None
        groups.setdefault(shared_key(cfg), []).append(c)
    packs = []
    for members in groups.values():
        members = sorted(members, key=lambda c: TrialConfig(**c).latent_dim)  # little padding per pack
        packs += [members[i : i + k] for i in range(0, len(members), k)]
    return packs
