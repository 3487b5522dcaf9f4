"""A real multi-node Ray cluster on one machine: a study spread over two workers survives losing one,
and stopping a cluster leaves no pointer to it behind.

Also checks the cluster configs offline: the launcher config, the KubeRay manifests and the
container image agree with pyproject and keep the dashboard and GCS off the internet.
"""

import importlib.util
import os
import re
import signal
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from ray._common.utils import get_ray_address_file

from vaesweep.config.errors import RayVersionError
from vaesweep.study import ray_compat
from vaesweep.study.tables import load_study

CLUSTER = ROOT / "cluster"


def local_cluster():
    spec = importlib.util.spec_from_file_location("local_cluster", CLUSTER / "local_cluster.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def cluster(monkeypatch):
    # notice a dead node within seconds (Ray's defaults wait ~15 s)
    monkeypatch.setenv("RAY_health_check_period_ms", "1000")
    monkeypatch.setenv("RAY_health_check_failure_threshold", "3")
    lc = local_cluster()
    port = 6400 + os.getpid() % 500
    address = lc.start(workers=2, port=port, cpus_per_worker=1)
    try:
        yield lc, address, port
    finally:
        lc.stop(port)
        assert not lc.cluster_processes(port), "processes of the test cluster are left"
        assert not names_cluster(port), "Ray's pointer to the current cluster still names the stopped one"


def names_cluster(port: int) -> bool:
    """Whether Ray's "current cluster" file (what a plain ray.init() joins) names the cluster on ``port``."""
    pointer = Path(get_ray_address_file(None))
    return pointer.is_file() and pointer.read_text().strip().endswith(f":{port}")


@pytest.mark.slow
def test_study_survives_losing_a_worker_node(cluster, tmp_path):
    lc, address, port = cluster
    study_yaml = tmp_path / "spread.yaml"
    study_yaml.write_text(
        yaml.safe_dump(
            {
                # trials of several seconds each, so the kill lands while both workers train
                "name": "spread",
                "base": {"epochs": 40, "eval_every": 5, "max_eval": 300, "threads": 1, "fid": False},
                "space": {"latent_dim": {"grid": [4, 8]}, "lam": {"grid": [0.5, 2.0]}},
                "resources": {"cpu": 1},
                "retries": 3,
            }
        )
    )
    env = {**lc.token_env(), "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "vaesweep",
            "run",
            str(study_yaml),
            "--address",
            address,
            "--storage",
            str(tmp_path / "runs"),
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    study = tmp_path / "runs" / "spread"
    try:
        victim_node = None
        deadline = time.time() + 300
        while victim_node is None and time.time() < deadline and driver.poll() is None:
            time.sleep(0.5)
            try:
                t = load_study(study)
            except Exception:
                continue
            running = t.trials[t.trials["status"] == "running"]["trial_id"]
            nodes = t.epochs[t.epochs["trial_id"].isin(running)].groupby("node")["epoch"].max() if len(t.epochs) else {}
            if len(nodes) == 2:  # both workers are training: kill worker 1 mid-trial
                assert lc.kill_worker(1, port) > 0
                victim_node = True
        assert victim_node, "never saw trials running on both workers"
        out, _ = driver.communicate(timeout=600)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    assert driver.returncode == 0, out[-3000:]
    t = load_study(study)
    assert len(t.trials) == 4 and (t.trials["status"] == "done").all(), t.trials[["trial_id", "status", "error"]]
    assert len(t.epochs) == 4 * 40 and not t.epochs.duplicated(["trial_id", "epoch"]).any()
    assert t.epochs["node"].nunique() == 2  # the study used both worker nodes


# README's reuse example (the trainable in a plain Tune sweep, which starts or joins a Ray of its own), tiny
README_REUSE = """
import vaesweep
from ray import tune

tune.Tuner(vaesweep.trainable, param_space={"epochs": 1, "max_train": 256, "max_eval": 128, "hidden": [32],
                                            "threads": 1, "fid": False, "lam": tune.grid_search([1.0])}).fit()
"""


@pytest.mark.slow
def test_stopped_cluster_leaves_no_pointer_and_readme_reuse_runs_right_after(tmp_path):
    lc = local_cluster()
    port = 7600 + os.getpid() % 300
    lc.start(workers=0, port=port)  # just a head: `ray start --head` points plain ray.init() at it
    try:
        assert names_cluster(port)
    finally:
        lc.stop(port)
    assert not names_cluster(port)
    # a dead cluster's pointer would make this retry its address for minutes, with no error
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["HOME"] = str(tmp_path)  # Tune's ~/ray_results and the new Ray's token stay in tmp_path
    res = subprocess.run(
        [sys.executable, "-c", README_REUSE], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(list((tmp_path / "ray_results").glob("*/*/result.json"))) == 1  # the trial ran and reported


def test_launcher_config_is_safe_and_installs_the_package():
    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    for key in (
        "cluster_name",
        "provider",
        "available_node_types",
        "head_node_type",
        "setup_commands",
        "head_start_ray_commands",
        "worker_start_ray_commands",
        "file_mounts",
    ):
        assert key in cfg, key
    types = cfg["available_node_types"]
    head, workers = types[cfg["head_node_type"]], [t for n, t in types.items() if n != cfg["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0 and any(w["resources"].get("GPU", 0) >= 1 for w in workers)
    assert any(w["max_workers"] > w["min_workers"] for w in workers)  # autoscaling GPU workers
    head_cmd = " ".join(cfg["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_cmd and "0.0.0.0" not in head_cmd
    assert any("pip install" in c and "/home/ray/vaesweep" in c for c in cfg["setup_commands"])
    assert "/home/ray/vaesweep" in cfg["file_mounts"]


def test_kuberay_manifests():
    cluster = yaml.safe_load((CLUSTER / "kuberay" / "raycluster.yaml").read_text())
    job = yaml.safe_load((CLUSTER / "kuberay" / "rayjob.yaml").read_text())
    assert cluster["kind"] == "RayCluster" and job["kind"] == "RayJob"
    groups = cluster["spec"]["workerGroupSpecs"]
    gpu = [g for g in groups if g["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu")]
    assert gpu and gpu[0]["maxReplicas"] > gpu[0]["minReplicas"]
    assert "python -m vaesweep run studies/capacity.yaml" in job["spec"]["entrypoint"]
    for manifest in (cluster, job):
        text = yaml.safe_dump(manifest)
        assert "LoadBalancer" not in text and "NodePort" not in text  # nothing exposed outside the cluster


def test_image_installs_what_pyproject_pins():
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    ray_pin = next(d for d in deps if d.startswith("ray"))
    base = re.search(r"^FROM rayproject/ray:(\d+\.\d+\.\d+)", dockerfile, re.M)
    assert base, "the image builds on Ray's own image"
    low = re.search(r">=\s*([\d.]+)", ray_pin).group(1)
    assert tuple(map(int, base.group(1).split("."))) >= tuple(map(int, low.split(".")))
    assert re.search(r"pip install[^\n]*\s/home/ray/vaesweep", dockerfile)  # deps come from pyproject itself
    for image_ref in (CLUSTER / "kuberay" / "raycluster.yaml", CLUSTER / "aws-gpu.yaml"):
        assert "vaesweep" in image_ref.read_text()


def test_only_the_checked_ray_is_accepted_and_pyproject_pins_it():
    """vaesweep/study/ray_compat.py holds every private Ray name; another Ray minor version is refused in one line."""
    ray_compat.check_version("2.60.3")
    with pytest.raises(
        RayVersionError, match=r"^Ray 2\.61\.0 is installed .* install it with pip install 'ray\[tune\]==2\.60\.\*'$"
    ):
        ray_compat.check_version("2.61.0")
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pin = next(d for d in deps if d.startswith("ray"))
    low, high = re.search(r">=\s*([\d.]+),\s*<\s*([\d.]+)", pin).groups()
    assert (low,) == ray_compat.CHECKED and high == "2.61"
