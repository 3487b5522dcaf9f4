"""What recording a study costs the driver, fed synthetic results without training or Ray (issue 13).

    nice -n 5 python benchmarks/recorder_probe.py                   # writes benchmarks/results/recorder_probe.md
    python benchmarks/recorder_probe.py --sizes 50 --old-sizes 50   # a quick look

Each trial reports like a full-MNIST capacity trial: 100 epochs of 469 minibatches, ``track_every`` 50
(a trace point every 50 minibatches: var_mu and mean_sigma2 of every variable), the per-variable
latents every epoch, latent_dim cycling over 2, 4, 8, 16, 32, 64. Trials run one after another and
the Recorder's hooks are called as Ray Tune calls them: ``on_trial_start``, ``on_trial_result`` per
epoch (no timed flush: ``flush_every_s`` is out of reach), ``on_trial_complete`` (a flush), and
``on_experiment_end``; then the study is read back with ``load_study``.

Per size, in a fresh subprocess (so ``ru_maxrss`` is that run's peak): mean and max flush time, the
driver's total time in the hooks, peak RSS while recording and at the end (compaction + read back),
the end's time. ``old``: the recorder of commit 54f91e2 (vaesweep/results.py, every flush rewrites
every table from rows held in memory), imported from a temporary copy; a run past ``--old-limit``
seconds is stopped and reported as such.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
EPOCHS, MINIBATCHES, TRACK_EVERY, DIMS = 100, 469, 50, (2, 4, 8, 16, 32, 64)
OLD_COMMIT = "54f91e2"
NOTE = (
    "\nThe old recorder at 216 trials was stopped after --old-limit seconds (its flushes grow with every trial: "
    "each rewrites every table; its row covers the trials it finished). 'peak RSS at end' is the process's "
    "peak after the study: the new compaction streams the large tables, so that peak is `load_study` "
    "itself holding every table in pandas.\n"
)


def old_module(folder: Path):
    """The recorder module of commit 54f91e2, its package-relative imports pointed at today's names."""
    source = subprocess.run(
        ["git", "show", f"{OLD_COMMIT}:vaesweep/results.py"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout
    source = source.replace(
        "from .config import trial_fields", "from vaesweep.config.trial import trial_fields"
    ).replace("from .packing import", "from vaesweep.config.packing import")
    (folder / "old_results.py").write_text(source)
    sys.path.insert(0, str(folder))
    import old_results

    return old_results


def report(rng, epoch: int, dim: int) -> dict:
    """One epoch's report of a trial (the keys engine/trial.py sends), random values."""
    steps = [s for s in range((epoch - 1) * MINIBATCHES + 1, epoch * MINIBATCHES + 1) if s % TRACK_EVERY == 0]
    var_mu, sigma2 = rng.random((len(steps), dim)).tolist(), rng.random((len(steps), dim)).tolist()
    latents = [
        {
            "latent": i,
            "mean_mu": v[0],
            "var_mu": v[1],
            "mean_sigma2": v[2],
            "law": v[3],
            "kl": v[4],
            "recon_gain": v[5],
            "active": bool(v[6] > 0.5),
        }
        for i, v in enumerate(rng.random((dim, 7)).tolist())
    ]
    return {
        "epoch": epoch,
        "step": epoch * MINIBATCHES,
        "evaluated": True,
        "node": "probe",
        "train_loss": 100.0,
        "train_recon": 90.0,
        "train_kl": 10.0,
        "lam_effective": 1.0,
        "epoch_time": 3.0,
        "time_total": 3.0 * epoch,
        "n_active": dim // 2,
        "n_inactive": dim - dim // 2,
        "law_residual_max": 0.1,
        "law_residual_mean": 0.05,
        "mean_mu_abs_max": 0.01,
        "recon": 90.0,
        "kl": 10.0,
        "elbo": -100.0,
        "kl_working": True,
        "law_excess": -0.1,
        "mu_excess": -0.1,
        "settled": epoch > 20,
        "settled_step": 20 * MINIBATCHES if epoch > 20 else None,
        "latents": latents,
        "trace": [{"step": s, "var_mu": v, "mean_sigma2": m} for s, v, m in zip(steps, var_mu, sigma2)],
    }


def probe(kind: str, n_trials: int, out: Path) -> dict:
    """Feed ``n_trials`` synthetic trials through the recorder; the measurements as a dict."""
    if kind == "new":
        from vaesweep.study.recorder import Recorder
        from vaesweep.study.tables import load_study
    else:
        module = old_module(out.parent)
        Recorder, load_study = module.Recorder, module.load_study
    rss_start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rng = np.random.default_rng(0)
    trials = [
        SimpleNamespace(
            trial_id=f"probe_{i:05d}",
            status="PENDING",
            error_file=None,
            config={
                "arch": "dense",
                "latent_dim": DIMS[i % len(DIMS)],
                "lam": 1.0,
                "seed": i,
                "epochs": EPOCHS,
                "track_every": TRACK_EVERY,
            },
        )
        for i in range(n_trials)
    ]
    rec = Recorder(out, flush_every_s=1e9)
    hooks, flushes = 0.0, []
    for t in trials:
        t.status = "RUNNING"
        t0 = time.perf_counter()
        rec.on_trial_start(0, trials, t)
        hooks += time.perf_counter() - t0
        for epoch in range(1, EPOCHS + 1):
            result = report(rng, epoch, t.config["latent_dim"])
            t0 = time.perf_counter()
            rec.on_trial_result(0, trials, t, result)
            hooks += time.perf_counter() - t0
        t.status = "TERMINATED"
        t0 = time.perf_counter()
        rec.on_trial_complete(0, trials, t)
        flushes.append(time.perf_counter() - t0)
        hooks += flushes[-1]
        print(
            json.dumps(
                {
                    "done": len(flushes),
                    "flush_s": flushes[-1],
                    "hooks_s": hooks,
                    "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                }
            ),
            flush=True,
        )
    rss_recording = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    rec.on_experiment_end(trials)
    del rec
    tables = load_study(out)
    end = time.perf_counter() - t0
    return {
        "kind": kind,
        "trials": n_trials,
        "trace_rows": len(tables.trace),
        "epoch_rows": len(tables.epochs),
        "flush_mean_s": float(np.mean(flushes)),
        "flush_max_s": max(flushes),
        "hooks_s": hooks,
        "end_s": end,
        "rss_start_mib": rss_start / 1024,
        "rss_recording_mib": rss_recording / 1024,
        "rss_end_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run_one(kind: str, n_trials: int, limit: float) -> dict:
    """``probe`` in a fresh interpreter (its own peak RSS), stopped after ``limit`` seconds."""
    with tempfile.TemporaryDirectory() as tmp:
        try:
            done = subprocess.run(
                [sys.executable, __file__, "--one", kind, str(n_trials), tmp],
                cwd=ROOT,
                capture_output=True,
                text=True,
                timeout=limit,
                check=True,
            )
        except subprocess.TimeoutExpired as stopped:  # what it had done by then
            out = stopped.stdout.decode() if isinstance(stopped.stdout, bytes) else stopped.stdout or ""
            done = [json.loads(line) for line in out.splitlines() if line.startswith('{"done"')]
            flushes = [d["flush_s"] for d in done]
            return {
                "kind": kind,
                "trials": n_trials,
                "stopped_after_s": limit,
                "done": len(done),
                "flush_mean_s": float(np.mean(flushes)) if flushes else float("nan"),
                "flush_max_s": max(flushes, default=float("nan")),
                "hooks_s": done[-1]["hooks_s"] if done else 0,
                "rss_recording_mib": done[-1]["rss_mib"] if done else float("nan"),
            }
    return json.loads(done.stdout.strip().splitlines()[-1])


def table(rows: list[dict]) -> str:
    head = (
        "| recorder | trials | trace rows | flush mean (s) | flush max (s) | driver time in hooks (s) | "
        "peak RSS recording (MiB) | end: compact + load_study (s) | peak RSS at end (MiB) |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for r in rows:
        if "stopped_after_s" in r:  # the flushes it made before it was stopped
            lines.append(
                f"| {r['kind']} | {r['trials']} (stopped after {r['stopped_after_s']:.0f} s, {r['done']} "
                f"done) | | {r['flush_mean_s']:.3f} | {r['flush_max_s']:.3f} | {r['hooks_s']:.1f} | "
                f"{r['rss_recording_mib']:.0f} | | |"
            )
            continue
        lines.append(
            f"| {r['kind']} | {r['trials']} | {r['trace_rows']:,} | {r['flush_mean_s']:.3f} | "
            f"{r['flush_max_s']:.3f} | {r['hooks_s']:.1f} | {r['rss_recording_mib']:.0f} | "
            f"{r['end_s']:.1f} | {r['rss_end_mib']:.0f} |"
        )
    return head + "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[50, 216, 1000])
    parser.add_argument("--old-sizes", type=int, nargs="*", default=[50, 216])
    parser.add_argument("--old-limit", type=float, default=180.0, help="seconds before an old run is stopped")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "recorder_probe.md")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "TRIALS", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, n, folder = args.one
        print(json.dumps(probe(kind, int(n), Path(folder) / "study")))
        return
    rows = []
    for n in sorted(set(args.sizes) | set(args.old_sizes)):
        for kind, wanted, limit in (("old", args.old_sizes, args.old_limit), ("new", args.sizes, 1800.0)):
            if n in wanted:
                rows.append(run_one(kind, n, limit))
                print(json.dumps(rows[-1]), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPU cores"
    text = (
        f"# Recorder probe\n\nMachine: {machine} ({platform.platform()}), Python {platform.python_version()}.\n"
        f"Command: `nice -n 5 python benchmarks/recorder_probe.py`. Synthetic full-MNIST-like trials "
        f"({EPOCHS} epochs x {MINIBATCHES} minibatches, track_every {TRACK_EVERY}, latent_dim cycling over "
        f"{', '.join(map(str, DIMS))}), one after another, a flush at every trial's completion.\n"
        f"old: the recorder of commit {OLD_COMMIT}; new: vaesweep.study.recorder.\n\n" + table(rows) + NOTE
    )
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
