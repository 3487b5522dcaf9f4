"""A study folder is relocatable: it resumes where it is now, whatever path it was started from.

Ray Tune pickles the Tuner (``tune/tuner.pkl``: its callbacks, its searcher) and the searcher's state, and
unpickles them on ``Tuner.restore``; every object in there that writes into the study folder (the
Recorder, the lambda* writer, the study's own MLflow store, the Optuna database) would keep the absolute
path the study was started from, and a moved or copied folder would resume into the old one. Ray itself
moves its trials' folders and checkpoints to the restore path (``Trial.set_storage``, Ray 2.60).

So the driver names the study folder it runs (``running_in``) for as long as it runs, and each of those
objects takes its folder from ``study_folder`` when unpickled, not from the pickle: the pickled path
counts only outside a driver (nothing then writes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

_RUNNING: ContextVar[Path | None] = ContextVar("vaesweep_study_folder", default=None)


@contextmanager
def running_in(out: Path) -> Iterator[Path]:
    """While the driver runs the study folder ``out``: what is unpickled writes there."""
    token = _RUNNING.set(Path(out).absolute())
    try:
        yield Path(out)
    finally:
        _RUNNING.reset(token)


def study_folder(saved: str | Path) -> Path:
    """The study folder an unpickled object writes to: the running driver's, else the ``saved`` one."""
    here = _RUNNING.get()
    return here if here is not None else Path(saved)
