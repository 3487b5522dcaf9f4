"""The ``status runs/<name>`` command of the CLI: progress, failures and the best trials, from the tables alone
(pandas; neither torch nor Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from vaesweep.config.errors import UsageError
from vaesweep.study.tables import best_trials, load_trials, progress_line, read_spec_copy


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not (path / "trials.parquet").exists():
        raise UsageError(f"'{path}' holds no study results; give a results folder such as runs/smoke")
    return print_status(path)


def print_status(path: Path) -> int:
    spec = read_spec_copy(path)
    metric, mode = spec.get("metric", "elbo"), spec.get("mode", "max")
    trials = load_trials(path)
    print(progress_line(spec.get("name", path.name), trials, len(trials), metric, mode))
    failed = trials[trials["status"] == "failed"]
    for _, row in failed.iterrows():
        print(f"  failed {row['trial_id']}: {row['error']}")
    if (path / "lambda_star.parquet").exists():
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print("minimal lambda with a working KL term (Sec. 6.1), per setting:")
            print(pd.read_parquet(path / "lambda_star.parquet").to_string(index=False))
    best = best_trials(trials, metric, mode, 5)
    if len(best):
        cols = [
            c
            for c in (
                "trial_id",
                "arch",
                "latent_dim",
                "lam",
                "seed",
                "n_active",
                "law_residual_max",
                "mean_mu_abs_max",
                "kl_working",
                "settled",
                "elbo",
                metric,
            )
            if c in best
        ]
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(f"best trials by {metric} ({mode}):")
            print(best[list(dict.fromkeys(cols))].to_string(index=False))
    return 0
