"""A study's Ray Tune param_space: the fixed base, each varied field's domain as Ray Tune's (``to_tune``), the seeds
as a grid, and the kind's settings; a packed study's grid over packs instead (``pack_param_space``)."""

from __future__ import annotations

from ray import tune

from vaesweep.config.packing import PACK_KEY, grid_configs, make_packs, pack_size
from vaesweep.config.spec import Choice, Domain, Grid, LogUniform, RandInt, StudySpec, Uniform

TO_TUNE = {  # each domain of the spec's ``space`` (vaesweep/config/spec.py) as Ray Tune's
    Grid: lambda d: tune.grid_search(d.grid),
    Choice: lambda d: tune.choice(d.choice),
    Uniform: lambda d: tune.uniform(*d.uniform),
    LogUniform: lambda d: tune.loguniform(*d.loguniform),
    RandInt: lambda d: tune.randint(d.randint[0], d.randint[1] + 1),  # inclusive bounds in the spec
}


def to_tune(domain: Domain):
    return TO_TUNE[type(domain)](domain)


def param_space(spec: StudySpec) -> dict:
    """The Ray Tune param_space: the fixed base, the varied fields, and the seeds as a grid."""
    space = {"threads": max(1, int(spec.resources.cpu)), **spec.trial_base()}
    space.update({k: to_tune(d) for k, d in spec.space.items()})
    space["seed"] = tune.grid_search(spec.seed_list())
    if spec.kind_settings is not None:  # e.g. the Sec. 5 noise experiment's, under a key trial fields ignore
        space[spec.kind.key] = spec.kind_settings.model_dump()
    return space


def pack_param_space(spec, k: int | None = None) -> dict:
    """The Ray Tune param_space of a packed grid study: the shared base, and a grid over packs."""
    k = pack_size(spec) if k is None else k
    base = {"threads": max(1, int(spec.resources.cpu)), **spec.trial_base()}
    packs = [
        [{key: v for key, v in c.items() if key not in base or base[key] != v} for c in pack]
        for pack in make_packs(grid_configs(spec), k)
    ]
    return {**base, PACK_KEY: tune.grid_search(packs)}
