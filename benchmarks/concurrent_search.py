"""Wall time of a 4-setting lambda search, every setting at once vs one after another (issue 16, point 3).

    PYTHONPATH=$PWD python benchmarks/concurrent_search.py                    # all three runs, in this order
    PYTHONPATH=$PWD python benchmarks/concurrent_search.py --runs 1 0 --append  # another pass, in another order

writes benchmarks/results/concurrent_search.md (and its rows, every pass, to concurrent_search.json).

Starts the loopback cluster of cluster/local_cluster.py (a head with no CPUs and 2 workers of 1 CPU
each, all on 127.0.0.1) and runs the same ``search: optuna`` study on it (dense, latent_dim [4, 8] x
2 seeds = 4 settings, 4 trials per setting, mnist5k, 10 epochs, 1 CPU and 1 thread per trial) three ways:

- concurrent: this tree; one Tuner, the settings side by side, each setting's trials one at a time
  (search.max_concurrent_per_setting: 1, the default);
- sequential: the code before (``--baseline``, exported with ``git archive``), one Tuner per setting
  one after another, with max_concurrent: 1 (the same per-setting order: each suggestion sees every
  trial before it);
- sequential, 2 per setting: the code before with no limit: one setting at a time, its trials
  side by side (the GP suggests while a trial of the same setting is still running).

The cluster's workers import this tree's trial code in every run; the baseline differs only in the
driver's search code (vaesweep/study/tuner.py, searcher.py, config/spec.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "cluster"))
import local_cluster  # noqa: E402

from vaesweep.study.tables import load_study  # noqa: E402

PORT = 6397  # not local_cluster's default, so a cluster started by hand elsewhere is left alone
SPEC = {
    "name": "lam4",
    "dataset": "mnist5k",
    "base": {
        "arch": "dense",
        "epochs": 10,
        "max_train": 4000,
        "max_eval": 1000,
        "hidden": [64],
        "fid": False,
        "law_tol": 0.5,
        "mu_tol": 0.5,
        "settle_patience": 2,
        "settle_min_steps": 0,
        "settle_law_tol": 100.0,
    },
    "space": {"lam": {"loguniform": [0.1, 10.0]}, "latent_dim": {"grid": [4, 8]}},
    "seeds": 2,
    "search": {"type": "optuna", "num_samples": 4, "start": [{"lam": 10.0}]},
    "resources": {"cpu": 1},
}
RUNS = [  # (label, code, spec changes)
    ("concurrent: settings side by side, 1 trial per setting at once", "this tree", {}),
    ("sequential: settings one after another, 1 trial at a time", "baseline", {"max_concurrent": 1}),
    ("sequential: settings one after another, 2 trials of a setting at once", "baseline", {}),
]


def export(ref: str, into: Path) -> Path:
    """The ``vaesweep`` package of commit ``ref``, unpacked under ``into``."""
    archive = subprocess.run(["git", "archive", ref, "vaesweep"], cwd=ROOT, check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def run(label: str, code: Path, spec: dict, storage: Path, address: str) -> dict:
    path = storage / "study.yaml"
    storage.mkdir(parents=True)
    path.write_text(yaml.safe_dump(spec))
    env = {**local_cluster.token_env(), "PYTHONPATH": str(code)}
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "vaesweep",
            "run",
            str(path),
            "--storage",
            str(storage),
            "--address",
            address,
            "--quiet",
        ],
        cwd=code,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{label}: exit {res.returncode}\n{res.stderr[-3000:]}")
    trials = load_study(storage / spec["name"]).trials
    running = ray_trial_seconds(storage / spec["name"])
    return {
        "run": label,
        "wall s": round(wall, 1),
        "trials done": int((trials["status"] == "done").sum()),
        "training s (sum)": round(float(trials["time_total"].sum()), 1),
        "Ray trial s (sum)": round(running),
        "trials running on average": round(running / wall, 2),
        "load avg 1 min before": round(load_before, 2),
        "load avg 1 min after": round(os.getloadavg()[0], 2),
    }


def ray_trial_seconds(study: Path) -> float:
    """Seconds Ray trials ran, summed: from each trial's start to its last report (Ray's experiment state)."""
    total = 0.0
    for folder in {p.parent for p in study.glob("tune/**/experiment_state-*.json")}:
        state = json.loads(max(folder.glob("experiment_state-*.json")).read_text())
        for _, meta in state["trial_data"]:
            meta = json.loads(meta)
            total += meta["last_result"]["timestamp"] - meta["start_time"]
    return total


def markdown(df: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(df.columns) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(map(str, row)) + " |" for row in df.itertuples(index=False)])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", default="1fae849", help="commit of the one-setting-after-another code")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "concurrent_search.md")
    parser.add_argument(
        "--runs",
        type=int,
        nargs="+",
        default=list(range(len(RUNS))),
        help="which runs (0: concurrent, 1, 2: sequential), in this order",
    )
    parser.add_argument("--append", action="store_true", help="keep the earlier passes' rows")
    args = parser.parse_args(argv)
    saved = args.out.with_suffix(".json")
    rows = json.loads(saved.read_text()) if args.append and saved.exists() else []
    n_pass = max((r["pass"] for r in rows), default=0) + 1
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        codes = {"this tree": ROOT, "baseline": export(args.baseline, tmp / "baseline")}
        address = local_cluster.start(workers=2, port=PORT, cpus_per_worker=1)
        try:
            for order, i in enumerate(args.runs):
                label, code, change = RUNS[i]
                row = run(label, codes[code], {**SPEC, **change}, tmp / f"runs{i}", address)
                rows.append({"pass": n_pass, "order": order + 1, **row})
                print(rows[-1], flush=True)
        finally:
            local_cluster.stop(PORT)
    saved.write_text(json.dumps(rows, indent=1))
    table = markdown(pd.DataFrame(rows))
    args.out.write_text(f"""# A 4-setting lambda search: every setting at once vs one after another

Machine: a {os.cpu_count()}-core CPU box ({platform.machine()}), no GPU,
shared with other jobs while it ran (the load averages below say how busy it was). Cluster:
cluster/local_cluster.py on 127.0.0.1, a head with 0 CPUs and 2 workers with 1 CPU each (2 CPUs: the
cores this box has). Study: dense, latent_dim [4, 8] x 2 seeds = 4 settings, search: optuna with 4 trials
per setting (16 trials; GP sampler, start point lam 10), mnist5k, 10 epochs of 4000 images, hidden [64],
resources cpu 1, threads 1. Baseline code: commit {args.baseline} (settings one after another).

    PYTHONPATH=$PWD python benchmarks/concurrent_search.py --baseline {args.baseline}
    PYTHONPATH=$PWD python benchmarks/concurrent_search.py --baseline {args.baseline} --runs 1 0 --append

Each pass starts a fresh cluster and runs the listed runs in its order ("order"): the box's load
changed during the passes, so compare runs within a pass and across passes.

{table}

"wall s": the driver's whole run (joining the cluster included). "training s": the trials' own training
time (time_total of their last epoch). "Ray trial s": each Ray trial from its start (worker up) to its
last report (Ray's whole-second timestamp), summed: with the worker start, imports and data load each trial
pays; over the wall time it is how many of the 2 CPUs trials kept busy on average.
""")
    print(args.out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
