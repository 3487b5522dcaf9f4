"""A multi-node Ray cluster on one machine, for trying vaesweep's cluster mode out.

    python cluster/local_cluster.py start --workers 2        # prints the address to use
    python -m vaesweep run studies/smoke.yaml --address 127.0.0.1:6390
    python cluster/local_cluster.py kill-worker 1            # simulate losing a node
    python cluster/local_cluster.py stop

The head and every worker are separate ``ray start`` processes, the head with no CPUs (so trials
run on the workers) and the dashboard off. Each worker gets its own custom resource ``worker_<i>``
and node-manager port, so a node can be told apart and killed. Unlike a study's own local Ray,
these nodes are not loopback-only: ``ray start`` registers every node under the machine's network
address (it replaces --node-ip-address=127.0.0.1), and its GCS, raylets, agents and workers listen
on all interfaces, so token authentication is on (RAY_AUTH_MODE=token, token in ~/.ray/auth_token).
``stop`` ends exactly the processes of this cluster (matched by its GCS port), nothing else, and
removes Ray's pointer to "the current cluster" when it names this one: a plain ``ray.init()`` (or
``tune.Tuner(...).fit()``) afterwards starts a fresh local Ray instead of retrying a dead address.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from ray._common.utils import get_ray_address_file

HOST = "127.0.0.1"


def _ray() -> str:
    return shutil.which("ray", path=str(Path(sys.executable).parent)) or "ray"


def start(workers: int = 2, port: int = 6390, cpus_per_worker: int = 1, timeout_s: float = 120.0) -> str:
    """Start a head and ``workers`` worker nodes; returns the cluster address ('127.0.0.1:PORT')."""
    env = token_env()
    if not (Path.home() / ".ray" / "auth_token").exists() and "RAY_AUTH_TOKEN" not in os.environ:
        subprocess.run([_ray(), "get-auth-token", "--generate"], check=True, env=env, capture_output=True)
    address = f"{HOST}:{port}"
    subprocess.run(
        [
            _ray(),
            "start",
            "--head",
            f"--node-ip-address={HOST}",
            f"--port={port}",
            "--num-cpus=0",
            "--num-gpus=0",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ],
        check=True,
        env=env,
        capture_output=True,
    )
    for i in range(workers):
        subprocess.run(
            [
                _ray(),
                "start",
                f"--address={address}",
                f"--node-ip-address={HOST}",
                f"--num-cpus={cpus_per_worker}",
                "--num-gpus=0",
                f"--node-manager-port={worker_port(port, i)}",
                f"--resources={json.dumps({f'worker_{i}': 1})}",
                "--disable-usage-stats",
            ],
            check=True,
            env=env,
            capture_output=True,
        )
    _state_file(port).write_text(json.dumps({"address": address, "sessions": sorted(_sessions(port))}))
    _wait_for_nodes(address, workers + 1, timeout_s)
    return address


def token_env() -> dict[str, str]:
    """Ray's token authentication on (the token lives in ~/.ray/auth_token): every node and every
    driver that joins must hold it, so a port reached by someone else runs no code."""
    return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}


def worker_port(port: int, i: int) -> int:
    return port + 100 + i


def _wait_for_nodes(address: str, n: int, timeout_s: float) -> None:
    code = (
        "import ray,sys; ray.init(address=sys.argv[1], log_to_driver=False); "
        "print(sum(1 for x in ray.nodes() if x['Alive']))"
    )
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        out = subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=token_env())
        if out.returncode == 0 and out.stdout.strip().splitlines()[-1:] == [str(n)]:
            return
        time.sleep(1.0)
    raise TimeoutError(f"the local Ray cluster at {address} did not reach {n} nodes in {timeout_s:.0f}s")


def _state_file(port: int) -> Path:
    return Path(tempfile.gettempdir()) / f"vaesweep-local-cluster-{port}.json"


def _sessions(port: int) -> set[str]:
    """The Ray session folder names of the cluster on ``port``: from its GCS, or as recorded at start."""
    found = set()
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if f"gcs_server_port={port}" in cmd:
            found.update(re.findall(r"session_\d{4}-\d\d-\d\d_[\d_-]+\d", cmd))
    if _state_file(port).exists():
        found.update(json.loads(_state_file(port).read_text())["sessions"])
    return found


def cluster_processes(port: int) -> list[psutil.Process]:
    """Every process of the cluster on ``port``: they all name its session folder."""
    sessions = _sessions(port)
    return [
        p
        for p in psutil.process_iter(["cmdline"])
        if sessions and p.pid != os.getpid() and any(s in " ".join(p.info["cmdline"] or []) for s in sessions)
    ]


def kill_worker(i: int, port: int = 6390) -> int:
    """SIGKILL worker node ``i``: its raylet and every process under it. Returns how many died."""
    marker = f"node_manager_port={worker_port(port, i)}"
    raylets = [p for p in psutil.process_iter(["cmdline"]) if marker in " ".join(p.info["cmdline"] or [])]
    victims = [c for r in raylets for c in r.children(recursive=True)] + raylets
    for p in victims:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    return len(victims)


def stop(port: int = 6390) -> int:
    """End every process of this cluster (not any other Ray on the machine)."""
    procs = cluster_processes(port)
    procs += [c for p in procs for c in _children(p)]
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)
    _state_file(port).unlink(missing_ok=True)
    _forget_current_cluster(port)
    return len(procs)


def _forget_current_cluster(port: int) -> None:
    """Remove the file where ``ray start --head`` left this cluster's address ('HOST:PORT') as the
    one a plain ``ray.init()`` joins (what ``ray stop`` does too), if it still names this cluster."""
    pointer = Path(get_ray_address_file(None))
    if pointer.is_file() and pointer.read_text().strip().rpartition(":")[2] == str(port):
        pointer.unlink(missing_ok=True)


def _children(p: psutil.Process) -> list[psutil.Process]:
    try:
        return p.children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("start")
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--cpus-per-worker", type=int, default=1)
    k = sub.add_parser("kill-worker")
    k.add_argument("index", type=int)
    sub.add_parser("stop")
    for p in (s, k, sub.choices["stop"]):
        p.add_argument("--port", type=int, default=6390)
    args = parser.parse_args(argv)
    if args.cmd == "start":
        print(start(args.workers, args.port, args.cpus_per_worker))
    elif args.cmd == "kill-worker":
        print(f"killed {kill_worker(args.index, args.port)} processes of worker {args.index}")
    else:
        print(f"stopped {stop(args.port)} processes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
