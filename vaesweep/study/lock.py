"""One driver per study folder.

``run`` holds ``<study>/driver.lock`` (an OS file lock, via filelock) while it runs and writes its
pid, host and start time to ``<study>/driver.json``. A second driver on the same folder stops with
one line naming the first. The OS lets go of the lock when a driver dies (even by SIGKILL), so a
``driver.json`` left behind on this host belongs to a dead driver: it is taken over with a warning.
A ``driver.json`` from another host is honoured until removed (its process cannot be checked from here).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from vaesweep.config.errors import StudyFolderError
from vaesweep.config.folder import DRIVER_INFO as INFO_FILE
from vaesweep.config.folder import LOCK_FILE


class StudyInUse(StudyFolderError):
    """Another driver runs this study folder; the message names it and the fix."""


@contextmanager
def driver_lock(out: Path):
    """Hold the study folder ``out`` for this driver (creating it); raise ``StudyInUse`` if another has it.

    A folder this driver created is removed again if the driver wrote nothing else into it.
    """
    created = [p for p in (out, *out.parents) if not p.exists()]
    out.mkdir(parents=True, exist_ok=True)
    lock, info = FileLock(out / LOCK_FILE, timeout=0), out / INFO_FILE
    try:
        lock.acquire()
    except Timeout:
        raise StudyInUse(_in_use(out, _read(info))) from None
    mine = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
    }
    try:
        old = _read(info)
        if old and old.get("host") != mine["host"]:
            raise StudyInUse(f"{_in_use(out, old)}; if that driver is gone, delete {info}")
        if old:
            print(
                f"vaesweep: warning: taking over the lock of driver pid {old.get('pid')} on {mine['host']} "
                f"(since {old.get('since')}), which is no longer running",
                file=sys.stderr,
                flush=True,
            )
        info.write_text(json.dumps(mine))
        yield
    finally:
        if _read(info) == mine:
            info.unlink()
        lock.release()
        _remove_if_empty(created, out)


def _in_use(out: Path, info: dict) -> str:
    if not info:  # the other driver has the lock but has not written its details yet
        return f"study folder {out} is in use by another driver; wait for it or stop it"
    return (
        f"study folder {out} is in use by driver pid {info.get('pid')} on host {info.get('host')} since "
        f"{info.get('since')}; wait for it or stop it (kill {info.get('pid')}); a lock of a dead process "
        "is taken over"
    )


def _read(info: Path) -> dict:
    try:
        data = json.loads(info.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove_if_empty(created: list[Path], out: Path) -> None:
    """Undo the folders this driver created when nothing but the lock file landed in them."""
    if not created or any(p.name != LOCK_FILE for p in out.iterdir()):
        return
    (out / LOCK_FILE).unlink(missing_ok=True)
    for folder in created:  # innermost first
        try:
            folder.rmdir()
        except OSError:
            return
