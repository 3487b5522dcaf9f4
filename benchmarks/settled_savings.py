"""What stopping trials once their collapse has settled saves, and whether the answers stay the same (issue 15).

    python benchmarks/settled_savings.py                      # the issue's sweep: full MNIST, 3 seeds
    python benchmarks/settled_savings.py --seeds 1 --storage /tmp/savings

One dense capacity sweep (latent dimension 2..64 x lambdas around the working one x seeds; the shape of
studies/capacity.yaml) is run twice through ``run_study``, the same trials with the same seeds:

- ``budget``: every trial trains its whole budget (``stop: {when: budget}``, today's default);
- ``settled``: ``stop: {when: settled, min_steps: M}``: Ray Tune's stopper ends a trial at the first
  evaluation where its collapse has settled (vaesweep/engine/settle.py) after at least M minibatches.

and the two answers are compared: the share of trial-epochs the settled run used, per trial the number of
active variables and whether the KL term works (the Sec. 4 laws), the onset of sparsity per lambda and seed
(analysis/capacity.py, settled trials only, as the report reads it) and the minimal working lambda per latent
dimension and seed (vaesweep.study.searcher.lambda_star). A trial stopped at epoch e has, by construction,
the budget run's state at epoch e (same seed, same minibatches): the script checks that too, on the epochs
table (``identical_at_stop``).

Writes ``--out``.md (the tables and the reading) and ``--out``.csv (the per-trial table). Each run is its own
study folder under ``--storage``; a folder already finished is read again, not re-run (``--reuse``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from analysis.capacity import onset_of_sparsity
from analysis.report import to_markdown
from vaesweep.config.spec import spec_from_dict
from vaesweep.study.runner import run_study
from vaesweep.study.searcher import lambda_star
from vaesweep.study.tables import load_study

KEYS = ["latent_dim", "lam", "seed"]
KINDS = ("budget", "settled")
COMPARED = ["n_active", "law_residual_max", "mean_mu_abs_max", "kl_working"]


def study(args, stop: str) -> dict:
    """The sweep as a study spec (a dict), stopping at the budget or once settled."""
    return {
        "name": f"{args.name}_{stop}",
        "dataset": args.dataset,
        "base": {
            "arch": "dense",
            "epochs": args.epochs,
            "eval_every": 1,  # settled is read from evaluations: one per epoch (469 minibatches on full MNIST)
            "fid": False,
            **({"max_train": args.max_train} if args.max_train else {}),
        },
        "space": {"latent_dim": {"grid": args.latents}, "lam": {"grid": args.lams}},
        "seeds": args.seeds,
        "search": {"type": "grid"},
        **({"stop": {"when": "settled", "min_steps": args.min_steps}} if stop == "settled" else {}),
        "resources": {"cpu": 1, "gpu": 0},
        "max_concurrent": args.concurrency,
        "retries": 1,
        "pack": "off",
    }


def run(args, stop: str) -> tuple[Path, float]:
    spec = spec_from_dict(study(args, stop))
    out = Path(args.storage) / spec.name
    if args.reuse and (out / "trials.parquet").exists():
        trials = pd.read_parquet(out / "trials.parquet")
        if len(trials) and trials["status"].eq("done").all() and len(trials) == spec.n_grid_points():
            print(f"{spec.name}: finished study found in {out}, read again", flush=True)
            return out, float("nan")
    t0 = time.perf_counter()
    run_study(spec, storage=args.storage, quiet=True)
    seconds = time.perf_counter() - t0
    print(f"{spec.name}: {seconds:.0f} s", flush=True)
    return out, seconds


def ended(trials: pd.DataFrame) -> pd.Series:
    """The trials that reached their final epoch: done, and stopped at the budget or settled (a trial cut
    short by an interrupted driver is recorded done until the study resumes; it is not compared)."""
    reason = trials["stopped_reason"] if "stopped_reason" in trials else pd.Series("budget", index=trials.index)
    final = reason.eq("settled") | (trials["epochs_done"] == trials["epochs"])
    return trials["status"].eq("done") & final


def per_trial(budget, settled) -> pd.DataFrame:
    """One row per trial: both runs' answers side by side, and the settled run's state against the budget
    run's at the epoch it stopped."""
    cols = [*KEYS, *COMPARED, "settled", "settled_step", "epochs_done", "time_total"]
    extra = [c for c in ("stopped_reason", "stopped_step") if c in settled.trials]
    b = budget.trials.loc[ended(budget.trials), cols]
    s = settled.trials.loc[ended(settled.trials), cols + extra]
    t = b.merge(s, on=KEYS, suffixes=("_budget", "_settled")).sort_values(KEYS)
    t["n_active_diff"] = t["n_active_settled"] - t["n_active_budget"]
    t["kl_working_agrees"] = t["kl_working_settled"].astype(bool) == t["kl_working_budget"].astype(bool)
    # the budget run at the stopped trial's last epoch: the same numbers (same seed, same minibatches)
    ids_b = budget.trials.set_index(KEYS)["trial_id"]
    ids_s = settled.trials.set_index(KEYS)["trial_id"]
    same = []
    for _, row in t.iterrows():
        key, epoch = tuple(row[k] for k in KEYS), int(row["epochs_done_settled"])
        a = _epoch_row(budget.epochs, ids_b[key], epoch)
        c = _epoch_row(settled.epochs, ids_s[key], epoch)
        same.append(bool(np.allclose(a, c, atol=1e-6)))
    t["identical_at_stop"] = same
    return t.reset_index(drop=True)


def _epoch_row(epochs: pd.DataFrame, trial_id: str, epoch: int) -> np.ndarray:
    """The compared collapse numbers of one trial's epoch (the last row reported for it)."""
    rows = epochs[(epochs["trial_id"] == trial_id) & (epochs["epoch"] == epoch)]
    return rows[COMPARED[:-1]].astype(float).to_numpy()[-1]


def onset(tables) -> pd.DataFrame:
    """The onset of sparsity per lambda and seed from settled trials (the report's rule)."""
    trials = tables.trials
    counted = trials[trials["settled"].eq(True) & trials["status"].eq("done")]
    return onset_of_sparsity(counted, ["lam", "seed"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="mnist", help="mnist (full, the issue's) or mnist5k")
    p.add_argument("--latents", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64])
    p.add_argument("--lams", type=float, nargs="+", default=[0.5, 1.0, 2.0], help="around the working lambda")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=25, help="the budget (studies/capacity.yaml's)")
    p.add_argument("--min-steps", type=int, default=2000, help="stop: min_steps of the settled run")
    p.add_argument("--max-train", type=int, default=None)
    p.add_argument("--concurrency", type=int, default=2, help="trials at once (one CPU each)")
    p.add_argument("--name", default="savings")
    p.add_argument("--storage", default="runs/benchmarks")
    p.add_argument("--reuse", action="store_true", help="read a finished run's folder instead of running it again")
    p.add_argument(
        "--compare-only",
        action="store_true",
        help="compare the two folders as they are (trials finished in both), running nothing",
    )
    p.add_argument("--out", default="benchmarks/results/settled_savings")
    args = p.parse_args(argv)

    if args.compare_only:
        (b_dir, b_s), (s_dir, s_s) = [(Path(args.storage) / f"{args.name}_{w}", float("nan")) for w in KINDS]
    else:
        (b_dir, b_s), (s_dir, s_s) = run(args, "budget"), run(args, "settled")
    budget, settled = load_study(b_dir), load_study(s_dir)
    t = per_trial(budget, settled)
    share = t["epochs_done_settled"].sum() / t["epochs_done_budget"].sum()
    compared = t[KEYS]  # onset and lambda* from the trials finished in both runs only
    budget = dataclasses.replace(budget, trials=budget.trials.merge(compared, on=KEYS))
    settled = dataclasses.replace(settled, trials=settled.trials.merge(compared, on=KEYS))
    on_b, on_s = onset(budget), onset(settled)
    on = on_b.merge(on_s, on=["lam", "seed"], suffixes=("_budget", "_settled"))
    star_b = lambda_star(budget.trials, ["latent_dim", "seed"])[["latent_dim", "seed", "lam_star", "n_unsettled"]]
    star_s = lambda_star(settled.trials, ["latent_dim", "seed"])[["latent_dim", "seed", "lam_star", "n_unsettled"]]
    star = star_b.merge(star_s, on=["latent_dim", "seed"], suffixes=("_budget", "_settled"))

    def same(a, b):
        return bool(((a == b) | (a.isna() & b.isna())).all())

    summary = pd.DataFrame(
        [
            {
                "trials_compared": f"{len(t)} of {len(args.latents) * len(args.lams) * args.seeds}",
                "trial_epochs_budget": int(t["epochs_done_budget"].sum()),
                "trial_epochs_settled": int(t["epochs_done_settled"].sum()),
                "share_used": round(float(share), 3),
                "wall_s_budget": round(b_s, 1),
                "wall_s_settled": round(s_s, 1),
                "trial_s_budget": round(float(t["time_total_budget"].sum()), 1),
                "trial_s_settled": round(float(t["time_total_settled"].sum()), 1),
                "stopped_settled": int(t.get("stopped_reason", pd.Series(dtype=str)).eq("settled").sum()),
                "settled_in_budget_run": int(t["settled_budget"].eq(True).sum()),
                "max_abs_n_active_diff": int(t["n_active_diff"].abs().max()),
                "kl_working_agrees": f"{int(t['kl_working_agrees'].sum())}/{len(t)}",
                "onset_identical": same(on["onset_budget"], on["onset_settled"]),
                "lambda_star_identical": same(star["lam_star_budget"], star["lam_star_settled"]),
                "identical_at_stop": f"{int(t['identical_at_stop'].sum())}/{len(t)}",
            }
        ]
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    t.to_csv(out.with_suffix(".csv"), index=False)
    shown = [
        *KEYS,
        "epochs_done_budget",
        "epochs_done_settled",
        *[c for c in ("stopped_reason", "stopped_step") if c in t],
        "n_active_budget",
        "n_active_settled",
        "kl_working_budget",
        "kl_working_settled",
        "settled_budget",
        "identical_at_stop",
    ]
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = [
        "# Settled stopping: the trial-epochs it saves, the answers it keeps\n",
        f"`python benchmarks/settled_savings.py {' '.join(argv or __import__('sys').argv[1:])}`\n",
        f"Data: {args.dataset}; dense net; latent {args.latents}; lambda {args.lams}; {args.seeds} seed(s); "
        f"budget {args.epochs} epochs, evaluated every epoch; settled run: stop when settled after >= "
        f"{args.min_steps} minibatches; metrics on the eval split. Machine: {os.cpu_count()} CPU cores, no GPU, "
        f"{'runs read back, not timed' if args.compare_only else f'{args.concurrency} trials at once'}, "
        f"load average at the end {load}.\n",
        "## Summary\n",
        to_markdown(summary),
        "## Onset of sparsity (settled trials only), per lambda and seed\n",
        to_markdown(on),
        "## Minimal working lambda per latent dimension and seed\n",
        to_markdown(star),
        "## Per trial\n",
        to_markdown(t[shown]),
    ]
    out.with_suffix(".md").write_text("\n".join(text))
    print(summary.T.to_string())
    print(f"wrote {out.with_suffix('.md')} and {out.with_suffix('.csv')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
