"""Shared fixtures: tiny, fast trial settings on the embedded data; one real tiny study per session."""

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import psutil
import pytest

from vaesweep.study.recorder import Recorder

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny():
    """A trial config that trains in about a second on one CPU core."""
    return {
        "epochs": 2,
        "max_train": 512,
        "max_eval": 200,
        "hidden": [64, 32],
        "latent_dim": 4,
        "batch_size": 64,
        "threads": 1,
        "fid": False,
    }


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VAESWEEP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def recorded(out, config, reports, trial_id="t_00000"):
    """One finished trial's reports fed through the study's Recorder as Ray Tune would (no Ray);
    returns the recorder's tables (vaesweep.study.tables.StudyTables), with ``out`` its study folder."""
    rec = Recorder(out, flush_every_s=1e9)
    trial = SimpleNamespace(trial_id=trial_id, config=config, status="TERMINATED")
    for m in reports:
        rec.on_trial_result(0, [trial], trial, m)
    rec.on_trial_complete(0, [trial], trial)
    return rec.tables()


def killed_driver(script: str, *args) -> subprocess.CompletedProcess:
    """Run a driver ``script`` (``python -c``) in its own process group, which it ends with SIGKILL (the
    driver and the local Ray it started); returns CompletedProcess (text) once that happened."""
    killed = subprocess.run(
        [sys.executable, "-c", script, *map(str, args)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        start_new_session=True,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    return killed


def epoch_rows(tables, trial_ids) -> pd.DataFrame:
    """(trial_id, epoch, time_total) of these trials' recorded epochs, sorted: what a resume must keep."""
    e = tables.epochs[tables.epochs["trial_id"].isin(trial_ids)]
    return e[["trial_id", "epoch", "time_total"]].sort_values(["trial_id", "epoch"]).reset_index(drop=True)


def vaesweep_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``python -m vaesweep ARGS`` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "vaesweep", *map(str, args)],
        cwd=cwd or ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
    )


REAL_STUDY = """
name: tiny
dataset: mnist5k
base: {epochs: 3, max_train: 512, max_eval: 128, hidden: [32], lam: 1.0, track_every: 2, gain_every: 1,
       fid: true, fid_samples: 128,
       settle_patience: 2, settle_min_steps: 0, settle_law_tol: 100.0, active_threshold: 1.0e-6}
stop: {when: settled}
# (a two-epoch window and every variable counted active: each trial settles at its second epoch, so the
# charts that read settled trials only are drawn, and stop: settled ends it there, a budget epoch early)
space:
  arch: {grid: [dense]}
  latent_dim: {grid: [2, 8]}
seeds: 1
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
retries: 0
"""


@dataclass
class RealStudy:
    study: Path  # runs/tiny, with its report in report/index.html
    returncode: int
    printed: str  # stdout and the tail of stderr
    listening: set[tuple[str, str, int]]  # (process name, address, port) of every listening TCP socket seen
    stdout: str  # what it printed into a file: progress lines, then the answers


def listening_sockets(pid: int) -> set[tuple[str, str, int]]:
    """Every listening TCP socket of process ``pid`` and all its descendants (Ray's GCS, raylet,
    agents and workers of a local Ray are descendants of the driver that started it)."""
    found = set()
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return found
    for p in procs:
        try:
            found |= {
                (p.name(), c.laddr.ip, c.laddr.port)
                for c in p.net_connections(kind="inet")
                if c.status == psutil.CONN_LISTEN
            }
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            pass
    return found


@pytest.fixture(scope="session")
def real_study(tmp_path_factory) -> RealStudy:
    """One real study through ``python -m vaesweep run`` (its own process and local Ray, its output into a
    file), which writes the report at its end. While it runs, the listening sockets of its processes are
    collected."""
    root = tmp_path_factory.mktemp("real")
    spec = root / "tiny.yaml"
    spec.write_text(REAL_STUDY)
    out, err = root / "stdout.txt", root / "stderr.txt"
    with out.open("w") as o, err.open("w") as e:
        driver = subprocess.Popen(
            [sys.executable, "-m", "vaesweep", "run", str(spec), "--storage", str(root)],
            cwd=ROOT,
            stdout=o,
            stderr=e,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        listening, deadline = set(), time.monotonic() + 400
        while driver.poll() is None and time.monotonic() < deadline:
            listening |= listening_sockets(driver.pid)
            time.sleep(0.5)
        if driver.poll() is None:
            driver.kill()
        driver.wait()
    printed = out.read_text()
    return RealStudy(root / "tiny", driver.returncode, printed + err.read_text()[-3000:], listening, printed)
