"""Command line: ``python -m vaesweep {train,run,status,report,fid,data}``; one module per command group.

Every error a user can cause ends with one line on stderr, ``vaesweep: error: <what> (<fix>)``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import sys

from vaesweep.cli import data, fid, report, study, train
from vaesweep.config.errors import USER_ERRORS, UsageError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too by default)
        raise UsageError(f"{message} (see: python -m {self.prog} --help)")  # prog: e.g. 'vaesweep data fetch'


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaesweep", description="Hyperparameter studies of VAE variable collapse.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for commands in (train, study, fid, report, data):
        commands.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except USER_ERRORS as err:
        print(f"vaesweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaesweep: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
