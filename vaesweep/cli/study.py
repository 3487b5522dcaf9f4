"""The ``run STUDY.yaml`` command, once its spec is valid (vaesweep/cli/run.py): run (or continue) the study on
Ray Tune, write its report, then print its answers (vaesweep/cli/answers.py) and the report's path."""

from __future__ import annotations

import argparse

from analysis.report import report_lines
from vaesweep.cli.answers import print_answers
from vaesweep.config.errors import StudyFailed
from vaesweep.config.spec import StudySpec
from vaesweep.study.runner import all_failed, run_study


def run_spec(spec: StudySpec, args: argparse.Namespace) -> int:
    out = run_study(spec, address=args.address, storage=args.storage, quiet=args.quiet, verbose=args.verbose)
    print(f"results: {out}")
    print_answers(out)
    try:  # the results are on disk already: a failing report must not lose them
        print("\n".join(report_lines(out)))
    except Exception as err:
        print(
            f"report: not written ({type(err).__name__}: {err}); the results are safe, "
            f"retry with: python -m vaesweep report {out}"
        )
    failed = all_failed(out)
    if failed is not None:
        raise StudyFailed(failed)
    return 0
