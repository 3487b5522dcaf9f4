"""The study commands of the CLI: ``run STUDY.yaml`` and ``status runs/<name>``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from vaesweep.config.spec import load_spec
from vaesweep.study.runner import run_study
from analysis.report import report_lines
from vaesweep.config.errors import UsageError
from vaesweep.study.tables import best_trials, load_study, progress_line, read_spec_copy


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.study)  # validated before anything starts or is written
    out = run_study(spec, address=args.address, storage=args.storage, quiet=args.quiet)
    print(f"results: {out}")
    try:  # the results are on disk already: a failing report must not lose them

        print("\n".join(report_lines(out)))
    except Exception as err:  # noqa: BLE001
        print(f"report: not written ({type(err).__name__}: {err}); the results are safe, "
              f"retry with: python -m vaesweep report {out}")
    return _print_status(out)


def cmd_status(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not (path / "trials.parquet").exists():
        raise UsageError(f"'{path}' holds no study results; give a results folder such as runs/smoke")
    return _print_status(path)


def _print_status(path: Path) -> int:
    spec = read_spec_copy(path)
    metric, mode = spec.get("metric", "elbo"), spec.get("mode", "max")
    trials = load_study(path).trials
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
        cols = [c for c in ("trial_id", "arch", "latent_dim", "lam", "seed", "n_active", "law_residual_max",
                            "mean_mu_abs_max", "kl_working", "settled", "elbo", metric) if c in best]
        with pd.option_context("display.width", 160, "display.max_columns", 20):
            print(f"best trials by {metric} ({mode}):")
            print(best[list(dict.fromkeys(cols))].to_string(index=False))
    return 0


def add_commands(sub) -> None:
    run = sub.add_parser("run", help="run (or continue) a study on Ray Tune")
    run.add_argument("study", help="study YAML, e.g. studies/smoke.yaml")
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--storage", help="results root (default: the spec's storage, 'runs')")
    run.add_argument("--quiet", action="store_true", help="no progress lines")
    run.set_defaults(func=cmd_run)

    status = sub.add_parser("status", help="what is done, running, failed; the best trials")
    status.add_argument("results", help="a study's results folder, e.g. runs/smoke")
    status.set_defaults(func=cmd_status)
