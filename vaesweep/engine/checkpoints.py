"""Where trained trials live on disk: the one module that knows the checkpoint layout.

- a Ray checkpoint of a plain trial (``TrialRun``, ``NoiseExperiment``) holds ``trial.pt``, the run's
  ``state_dict()``; one of a pack (``PackedRun``) holds ``p<i>/trial.pt`` per configuration i, each a
  ``TrialRun`` state dict, and the study names that configuration ``<ray trial id>-p<i>``;
- a study folder keeps Ray's results under ``tune/``: ``tune/[<experiment>/]<name>_<ray trial id>_.../
  checkpoint_<n>/``;
- ``python -m vaesweep train --out DIR`` writes ``DIR/model.pt``: the config and the model weights.

Every one of them holds ``"config"`` and ``"model"``: ``load_trained`` reads any, ``build_trained``
makes the model again.

Nothing in them runs as code: each is read with ``torch.load(..., weights_only=True)``, which unpickles
tensors and plain types only (a run's state is made of those: weights and Adam state as tensors, the
generator state a uint8 tensor, the config and history as dicts, lists, numbers and strings). A crafted
``trial.pt`` in someone else's study folder is refused (``CheckpointError``), never executed.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path

import torch

from vaesweep.config.folder import RAY_FOLDER
from vaesweep.config.packing import packed_id
from vaesweep.config.trial import TrialConfig, trial_fields
from vaesweep.engine.models import model_for
from vaesweep.engine.run import Run

__all__ = [
    "CheckpointError",
    "CHECKPOINT_FILE",
    "MODEL_FILE",
    "packed_id",
    "split_packed_id",
    "save_run",
    "load_run",
    "find_checkpoint",
    "trained_file_in",
    "save_model",
    "load_trained",
    "build_trained",
]

CHECKPOINT_FILE = "trial.pt"  # a run's state in a Ray checkpoint folder
MODEL_FILE = "model.pt"  # train --out's config and weights
_PACKED = re.compile(r"^(?P<ray_id>.+)-p(?P<i>\d+)$")  # the inverse of config.packing.packed_id


def split_packed_id(trial_id: str) -> tuple[str, int | None]:
    """(Ray trial id, configuration index) of a study trial id; index None for a plain trial."""
    m = _PACKED.match(trial_id)
    return (m["ray_id"], int(m["i"])) if m else (trial_id, None)


def _member_file(i: int | None) -> str:
    """A configuration's state file inside a Ray checkpoint folder."""
    return CHECKPOINT_FILE if i is None else f"p{i}/{CHECKPOINT_FILE}"


class CheckpointError(ValueError):
    """A file that is not a checkpoint vaesweep wrote (or that asks to run code when loaded)."""


def _load(path: Path, **kwargs):
    """``torch.load(path, weights_only=True)``: tensors and plain types only; CheckpointError for anything else."""
    try:
        return torch.load(path, weights_only=True, **kwargs)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        why = next((ln.strip() for ln in str(err).splitlines() if ln.strip()), type(err).__name__)
        raise CheckpointError(
            f"'{path}' is not a vaesweep trial checkpoint ({why[:200]}); give a {MODEL_FILE} from train --out "
            f"or a checkpoint_*/{CHECKPOINT_FILE} of a study"
        ) from None


def _run_files(run: Run, folder: Path) -> list[Path]:
    """Where each of ``run``'s state dicts goes in a checkpoint folder: a plain run's trial.pt, a pack's p<i>/."""
    return [folder / _member_file(i if run.packed else None) for i in range(run.k)]


def save_run(run: Run, folder: Path) -> None:
    """Write ``run``'s state into a (new, empty) checkpoint folder."""
    for file, state in zip(_run_files(run, folder), run.state_dicts(), strict=True):
        file.parent.mkdir(exist_ok=True)
        torch.save(state, file)


def load_run(run: Run, folder: Path) -> None:
    """Restore ``run`` from the checkpoint folder ``save_run`` wrote."""
    run.load_state_dicts([_load(file) for file in _run_files(run, folder)])


def find_checkpoint(study_dir: str | Path, trial_id: str) -> Path | None:
    """The trial's latest state file under the study's Ray folder, or None.

    Searches nested experiments too (one per Optuna setting); a packed trial ``<ray id>-p<i>``
    lives in its Ray trial's checkpoints as ``p<i>/trial.pt``.
    """
    ray_id, i = split_packed_id(trial_id)
    found = [
        p
        for d in (Path(study_dir) / RAY_FOLDER).rglob(f"*{ray_id}_*")
        if d.is_dir()
        for p in d.glob(f"checkpoint_*/{_member_file(i)}")
    ]
    return max(found, key=lambda p: p.parents[1 if i is not None else 0].name) if found else None


def trained_file_in(path: str | Path) -> Path | None:
    """The trained trial a path names: a ``.pt`` file, or a folder holding model.pt or trial.pt; else None."""
    path = Path(path)
    if path.is_dir():
        return next((path / name for name in (MODEL_FILE, CHECKPOINT_FILE) if (path / name).is_file()), None)
    return path if path.is_file() and path.suffix == ".pt" else None


def save_model(folder: Path, cfg: TrialConfig, model: torch.nn.Module) -> Path:
    """``train --out``'s model.pt: the config and the weights (what ``load_trained`` reads)."""
    path = folder / MODEL_FILE
    torch.save({"config": cfg.model_dump(), "model": model.state_dict()}, path)
    return path


def load_trained(path: str | Path) -> tuple[TrialConfig, dict]:
    """(config, model weights) of a trained trial: ``train --out``'s model.pt or a study's
    ``checkpoint_*/trial.pt``. Raises CheckpointError (a ValueError) for any other file."""

    state = _load(Path(path), map_location="cpu")
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise CheckpointError(
            f"'{path}' is not a vaesweep trial checkpoint; give a {MODEL_FILE} from train --out "
            f"or a checkpoint_*/{CHECKPOINT_FILE} of a study"
        )
    return TrialConfig(**{k: v for k, v in state["config"].items() if k in trial_fields()}), state["model"]


def build_trained(cfg: TrialConfig, weights: dict, shape: tuple[int, int, int]) -> torch.nn.Module:
    """The trial's VAE for images of ``shape``, holding ``weights``, in eval mode."""
    model = model_for(cfg, shape)
    model.load_state_dict(weights)
    return model.eval()
