"""Command line: ``python -m vaesweep {train,run,status,report,fid,data}``.

The arguments of every command are declared in vaesweep/cli/args.py, which imports neither torch nor Ray;
each command runs in its own module (COMMANDS), imported only when that command runs, so ``status`` and
``--help`` start fast. Every error a user can cause ends with one line on stderr,
``vaesweep: error: <what> (<fix>)``, and exit status 2. A study whose every trial failed exits 1 with the first
trial's error; Ctrl+C exits 130 with "interrupted: run the same command again to resume".
"""

from __future__ import annotations

import argparse
import sys
from importlib import import_module

from vaesweep.cli import args as cli_args
from vaesweep.config.errors import USER_ERRORS, StudyFailed, UsageError

COMMANDS = {  # command -> "module:function" that runs it
    "train": "vaesweep.cli.train:cmd_train",
    "run": "vaesweep.cli.run:cmd_run",
    "status": "vaesweep.cli.status:cmd_status",
    "fid": "vaesweep.cli.fid:cmd_fid",
    "report": "vaesweep.cli.report:cmd_report",
    "data fetch": "vaesweep.cli.data:cmd_fetch",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too by default)
        raise UsageError(f"{message} (see: python -m {self.prog} --help)")  # prog: e.g. 'vaesweep data fetch'


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaesweep", description="Hyperparameter studies of VAE variable collapse.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for add_args in (
        cli_args.train_args,
        cli_args.study_args,
        cli_args.fid_args,
        cli_args.report_args,
        cli_args.data_args,
    ):
        add_args(sub)
    return parser


def run_command(args: argparse.Namespace) -> int:
    """Import the function of ``args.cmd`` (COMMANDS) and run it."""
    module, function = COMMANDS[args.cmd].split(":")
    return getattr(import_module(module), function)(args)


def main(argv: list[str] | None = None) -> int:
    try:
        return run_command(build_parser().parse_args(argv))
    except USER_ERRORS as err:
        print(f"vaesweep: error: {err}", file=sys.stderr)
        return 2
    except PermissionError as err:  # e.g. a study folder of another user, read-only for this one
        print(
            f"vaesweep: error: {err.filename or err}: permission denied; run as a user who may write there, "
            "or copy the study folder to one you own",
            file=sys.stderr,
        )
        return 2
    except StudyFailed as err:
        print(f"vaesweep: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # Ctrl+C anywhere, and a study that Ray stopped on Ctrl+C (StudyInterrupted)
        print("vaesweep: interrupted: run the same command again to resume", file=sys.stderr)
        return 130
