"""A killed driver's study resumes even where Ray's experiment snapshot lags its trials' checkpoints.

Ray Tune 2.60 handles a trial's checkpoint in this order (``TuneController._process_trial_save``, then
``step``): the new checkpoint is registered and the previous one deleted at once
(``CheckpointConfig(num_to_keep=1)``), and only at the end of the controller's step is the experiment
snapshot written that names the new one. A driver killed in between leaves a snapshot whose trial points
to a deleted ``checkpoint_<n>`` while ``checkpoint_<n+1>`` is on disk, and ``Tuner.restore`` then fails
that trial ("Could not recover from checkpoint as it does not exist on storage anymore"). Short trials
with reused workers checkpoint back to back, so a kill lands there often.

``CheckpointRepair`` mends it on the first step of a restored study, before any trial is started: a trial
whose checkpoint is gone gets the next one on disk, with the metrics Ray reported alongside it (the
trial's ``result.json``), registered through Ray's own ``Trial.on_checkpoint`` — the state the snapshot
would have held had it been written a moment later. The trial then resumes from that checkpoint (its
later epochs trained again to the same numbers; the recorder keeps the later rows).

``relocate_search_state`` lets a moved or copied study create its trials where it now is. ``Tuner.restore``
moves the trials it restores to the new path (``Trial.set_storage``), but the trials its search algorithm
has not created yet would get the storage its saved state names (``basic-variant-state-*.json``,
``search_gen_state-*.json``: pickles holding the experiment spec's ``StorageContext``), the folder the study
was started in: they are pointed at the experiment's folder as it is now, before the Tuner restores.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import ray.cloudpickle as cloudpickle  # what Ray writes its search algorithm's state with (Ray 2.60)
from ray import tune

from vaesweep.study.ray_compat import StorageContext, TrainingResult

SEARCH_STATES = ("basic-variant-state-*.json", "search_gen_state-*.json")  # Ray's search algorithm's state

log = logging.getLogger(__name__)
RESULT_FILE = "result.json"  # Ray's JsonLoggerCallback: one reported result per line, in the trial folder


def next_checkpoint(missing: Path) -> Path | None:
    """The oldest non-empty ``checkpoint_<n>`` folder after ``missing`` in its trial folder, or None.

    The oldest, not the newest: a newer one may have been half written by a worker when the driver died.
    """
    later = [p for p in missing.parent.glob("checkpoint_*") if p.name > missing.name and any(p.iterdir())]
    return min(later, key=lambda p: p.name) if later else None


def reported_with(checkpoint: Path) -> dict:
    """The result Ray recorded with ``checkpoint`` (its ``checkpoint_dir_name``), or {} if none was written."""
    results = checkpoint.parent / RESULT_FILE
    found = {}
    if results.exists():
        for line in results.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
            if row.get("checkpoint_dir_name") == checkpoint.name:
                found = row
    return found


def repair(trial) -> Path | None:
    """Point ``trial`` at the checkpoint after its deleted one; returns that checkpoint, or None if the trial
    needed nothing (no checkpoint, or it exists) or nothing later is on disk (then Ray reports the loss)."""
    current = trial.checkpoint
    if current is None or current.filesystem.type_name != "local":
        return None
    missing = Path(current.path)
    if missing.exists():
        return None
    found = next_checkpoint(missing)
    if found is None:
        return None
    # Registering the new checkpoint deletes the old one (num_to_keep=1), and Ray's deletion raises on a
    # folder that is gone: it gets back an empty one to delete.
    missing.mkdir()
    checkpoint = tune.Checkpoint(path=str(found), filesystem=current.filesystem)
    trial.on_checkpoint(TrainingResult(checkpoint=checkpoint, metrics=reported_with(found)))
    log.warning(
        "trial %s resumes from %s: the snapshot named %s, replaced before the driver died",
        trial.trial_id,
        found.name,
        missing.name,
    )
    return found


class CheckpointRepair(tune.Callback):
    """On the first step of a (restored) study, repairs every trial whose checkpoint the snapshot named
    but the disk no longer holds (see the module's docstring)."""

    def __init__(self):
        self._checked = False

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        if self._checked:
            return
        self._checked = True  # restored trials are all loaded before the first step; new ones never need it
        for trial in trials:
            repair(trial)


def relocate_search_state(experiment: Path) -> int:
    """Point every storage in the experiment's saved search-algorithm state at ``experiment`` (its folder as it
    is now); returns how many files were rewritten (0 where the study has not moved)."""
    rewritten = 0
    for file in sorted(p for pattern in SEARCH_STATES for p in experiment.glob(pattern)):
        with file.open("rb") as f:
            state = cloudpickle.load(f)
        moved = [
            s
            for s in _storages(state, set())
            if Path(s.storage_fs_path) != experiment.parent or s.experiment_dir_name != experiment.name
        ]
        if not moved:
            continue
        for storage in moved:
            storage.storage_fs_path, storage.experiment_dir_name = str(experiment.parent), experiment.name
        tmp = file.with_name(f".{file.name}.tmp")
        with tmp.open("wb") as f:
            cloudpickle.dump(state, f)
        os.replace(tmp, file)
        rewritten += 1
    return rewritten


def _storages(obj, seen: set) -> list[StorageContext]:
    """The StorageContext objects reachable from ``obj`` through dicts, lists, tuples and attributes."""
    if id(obj) in seen or isinstance(obj, (str, bytes, int, float, type(None))):
        return []
    seen.add(id(obj))
    if isinstance(obj, StorageContext):
        return [obj]
    if isinstance(obj, dict):
        children = list(obj.values())
    elif isinstance(obj, (list, tuple, set)):
        children = list(obj)
    else:
        children = list(getattr(obj, "__dict__", {}).values())
    return [s for child in children for s in _storages(child, seen)]
