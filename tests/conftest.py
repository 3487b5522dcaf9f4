"""Shared fixtures: tiny, fast trial settings on the embedded data."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny():
    """A trial config that trains in about a second on one CPU core."""
    return {"epochs": 2, "max_train": 512, "max_eval": 200, "hidden": [64, 32], "latent_dim": 4,
            "batch_size": 64, "threads": 1, "fid": False}


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VAESWEEP_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def vaesweep_cli(*args, cwd=None, timeout=600, env=None):
    """Run ``python -m vaesweep ARGS`` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "vaesweep", *map(str, args)], cwd=cwd or ROOT,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
