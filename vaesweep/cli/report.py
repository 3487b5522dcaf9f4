"""The report command of the CLI: ``report runs/<name>`` writes ``runs/<name>/report/index.html``."""

from __future__ import annotations

import argparse
from pathlib import Path

from analysis.report import report_lines
from vaesweep.config.errors import UsageError
from vaesweep.config.folder import REPORT_FOLDER, has_results
from vaesweep.study.tables import load_trials


def cmd_report(args: argparse.Namespace) -> int:
    path = Path(args.results)
    if not has_results(path):
        raise UsageError(f"'{path}' holds no study results; give a results folder such as runs/smoke")
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: a file, not a folder; give a folder for the report (created if absent)")
    if args.trial:
        known = set(load_trials(path)["trial_id"])
        unknown = [t for t in args.trial if t not in known]
        if unknown:
            raise UsageError(
                f"--trial {unknown[0]}: no such trial in '{path}'; see the trial ids in "
                f"`python -m vaesweep status {path}` or {path / REPORT_FOLDER / 'trials.csv'}"
            )
    print("\n".join(report_lines(path, args.out, args.trial)))
    return 0
