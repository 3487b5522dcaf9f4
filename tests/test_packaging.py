"""The package fits into its user's environment: a PyTorch already installed in the declared range stays.

pyproject.toml declares torch and torchvision as ranges (constraints.txt holds the exact versions tested
here). A scratch virtual environment gets a stand-in for a user's own build, torch 2.14.0 and torchvision
0.29.0 (their dist-info only: pip judges installed distributions by their metadata, so no GB wheel is
needed), and pip's resolver is asked what ``pip install -e .`` would install there (``--dry-run --report``):
neither torch nor torchvision. With exact pins (torch==2.14.1) pip would replace both.
"""

import json
import subprocess
import sys
import tomllib
import venv

import pytest
from conftest import ROOT
from packaging.requirements import Requirement

USERS_BUILD = {"torch": ("2.14.0", []), "torchvision": ("0.29.0", ["torch==2.14.0"])}


def fake_distribution(site, name: str, version: str, requires: list[str]) -> None:
    info = site / f"{name}-{version}.dist-info"
    info.mkdir()
    meta = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    meta += [f"Requires-Dist: {r}" for r in requires]
    (info / "METADATA").write_text("\n".join(meta) + "\n")
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")


def test_declared_ranges_hold_the_tested_versions():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {Requirement(r).name: Requirement(r) for r in project["dependencies"]}
    tested = {
        Requirement(line).name: Requirement(line)
        for line in (ROOT / "constraints.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert set(tested) == {"torch", "torchvision"}
    for name, pin in tested.items():
        (exact,) = pin.specifier
        assert exact.operator == "==" and declared[name].specifier.contains(exact.version)
        assert declared[name].specifier.contains(USERS_BUILD[name][0])  # the stand-in below is in range
        assert not any(s.operator == "==" for s in declared[name].specifier)  # a range, not a pin
    assert "psutil" not in declared  # only cluster/local_cluster.py and the tests use it: the extras
    assert "psutil>=5.9" in project["optional-dependencies"]["cluster"]
    assert any(r.startswith("optuna-dashboard") for r in project["optional-dependencies"]["dashboard"])


@pytest.mark.slow
def test_pip_install_keeps_a_users_torch_in_range(tmp_path):
    env = tmp_path / "env"
    venv.EnvBuilder(with_pip=False).create(env)
    (site,) = (env / "lib").glob("python3*/site-packages")
    for name, (version, requires) in USERS_BUILD.items():
        fake_distribution(site, name, version, requires)
    report = tmp_path / "report.json"
    res = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(env / "bin" / "python"), "install", "--dry-run", "--quiet"]
        + ["--report", str(report), "-e", str(ROOT)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    would_install = {item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]}
    assert "vaesweep" in would_install and "ray" in would_install  # the resolver did resolve the project
    assert not would_install & {"torch", "torchvision"}, would_install
