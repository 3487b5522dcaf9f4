"""Issue 24: a full-MNIST conv trial end to end, before (contiguous) and after (channels_last), side by side.

    python benchmarks/conv_end_to_end.py --seeds 0 --out benchmarks/results/conv_end_to_end

Runs the trial function (``vaesweep.train_vae``) on the Fig. 4 conv net as ``studies/paper_cpu.yaml``'s conv part
trains it (full MNIST, latent 16, lambda 1, eval every epoch, gains every 7th, stopped once settled, budget 14 epochs;
FID-proxy off: it is the same cost in both layouts and not training), once per memory format and seed, each in its
own process with one torch thread, the two layouts of a seed at the same time (one per core), so both see the same
machine. Writes ``--out``.md / .csv: per run the wall time to its end, seconds per epoch, where it stopped, the
settled answer (n_active, kl_working). Needs the full MNIST cache: python -m vaesweep data fetch mnist.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from analysis.report import to_markdown
from vaesweep import train_vae

LAYOUTS = ("contiguous", "channels_last")
PAPER_CPU_CONV = {
    "arch": "conv",
    "dataset": "mnist",
    "latent_dim": 16,
    "lam": 1.0,
    "epochs": 14,
    "eval_every": 1,
    "gain_every": 7,
    "fid": False,
    "stop_when": "settled",
    "threads": 1,
}


def one_run(layout: str, seed: int) -> dict:
    """Train one trial in this process; its timing and answer."""
    t0 = time.perf_counter()
    result = train_vae({**PAPER_CPU_CONV, "memory_format": layout, "seed": seed})
    wall = time.perf_counter() - t0
    epochs = [h["epoch_time"] for h in result.history]
    s = result.summary
    return {
        "layout": layout,
        "seed": seed,
        "wall_s": round(wall, 1),
        "epochs": len(epochs),
        "s_per_epoch_median": round(sorted(epochs)[len(epochs) // 2], 1),
        "stopped_reason": s.get("stopped_reason"),
        "stopped_step": s.get("stopped_step"),
        "settled": s.get("settled"),
        "n_active": s["n_active"],
        "kl_working": s["kl_working"],
        "law_residual_max": round(s["law_residual_max"], 3),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/conv_end_to_end"))
    p.add_argument("--child", nargs=2, metavar=("LAYOUT", "SEED"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        print(json.dumps(one_run(args.child[0], int(args.child[1]))))
        return
    rows = []
    for seed in args.seeds:
        cmds = [[sys.executable, __file__, "--child", layout, str(seed)] for layout in LAYOUTS]
        procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for cmd in cmds]
        rows += [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
    table = pd.DataFrame(rows)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    args.out.with_suffix(".md").write_text(to_markdown(table))
    print(to_markdown(table))


if __name__ == "__main__":
    main()
