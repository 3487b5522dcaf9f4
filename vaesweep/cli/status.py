"""The ``status runs/<name>`` command of the CLI: a finished or running study's counts, failures and answers
(vaesweep/cli/answers.py: what ``run`` prints at its end), its best trials and its report, from the tables alone
(pandas and the report's rules; neither torch nor Ray)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from vaesweep.cli.answers import print_answers
from vaesweep.config.errors import UsageError
from vaesweep.config.folder import REPORT_FOLDER, REPORT_PAGE, has_results
from vaesweep.study.tables import best_trials, load_trials, read_spec_copy

REPORT = Path(REPORT_FOLDER) / REPORT_PAGE


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not has_results(path):
        raise UsageError(f"'{path}' holds no study results; give a results folder such as runs/smoke")
    return print_status(path)


def print_status(path: Path) -> int:
    print_answers(path)
    spec = read_spec_copy(path)
    metric, mode = spec.get("metric", "elbo"), spec.get("mode", "max")
    trials = load_trials(path)
    running = trials[trials["status"] == "running"]
    if len(running):
        print(f"running: {', '.join(running['trial_id'])}")
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
    if (path / REPORT).exists():
        print(f"report: {path / REPORT}")
    return 0
