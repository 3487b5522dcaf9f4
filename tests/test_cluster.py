"""A real multi-node Ray cluster on loopback: a study spread over two workers survives losing one.

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

import pytest
import yaml

from conftest import ROOT
from vaesweep.results import load_study

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


def test_study_survives_losing_a_worker_node(cluster, tmp_path):
    lc, address, port = cluster
    study_yaml = tmp_path / "spread.yaml"
    study_yaml.write_text(yaml.safe_dump({
        # trials of several seconds each, so the kill lands while both workers train
        "name": "spread", "base": {"epochs": 40, "eval_every": 5, "max_eval": 300, "threads": 1, "fid": False},
        "space": {"latent_dim": {"grid": [4, 8]}, "lam": {"grid": [0.5, 2.0]}},
        "resources": {"cpu": 1}, "retries": 3}))
    env = {**lc.token_env(), "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "vaesweep", "run", str(study_yaml), "--address", address,
                               "--storage", str(tmp_path / "runs")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
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


def test_launcher_config_is_safe_and_installs_the_package():
    cfg = yaml.safe_load((CLUSTER / "aws-gpu.yaml").read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands", "file_mounts"):
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
