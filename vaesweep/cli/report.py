"""The report command of the CLI: ``report runs/<name>`` writes ``runs/<name>/report/index.html``."""

from __future__ import annotations

import argparse
from pathlib import Path
from vaesweep.config.errors import UsageError
from analysis.report import report_lines
from vaesweep.study.tables import load_study


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not (path / "trials.parquet").exists():
        raise UsageError(f"'{path}' holds no study results; give a results folder such as runs/smoke")
    if args.trial:
        known = set(load_study(path).trials["trial_id"])
        unknown = [t for t in args.trial if t not in known]
        if unknown:
            raise UsageError(f"--trial {unknown[0]}: no such trial in '{path}'; see the trial ids in "
                             f"`python -m vaesweep status {path}` or {path}/report/trials.csv")
    print("\n".join(report_lines(path, args.out, args.trial)))
    return 0


def add_commands(sub) -> None:
    report = sub.add_parser("report", help="charts and tables of a study's results as an HTML page")
    report.add_argument("results", help="a study's results folder, e.g. runs/smoke")
    report.add_argument("--out", help="report folder (default: <results>/report)")
    report.add_argument("--trial", action="append", metavar="TRIAL_ID",
                        help="draw Table 1, Fig. 2 and Fig. 3 for this trial (repeatable; default: one "
                             "representative trial per architecture)")
    report.set_defaults(func=cmd_report)
