"""The ``run STUDY.yaml`` command: validate the spec first, then load Ray and torch to run it.

A wrong spec is refused in well under a second (this module imports the configuration leaf only);
the study itself runs in vaesweep/cli/study.py, imported only once the spec is valid.
"""

from __future__ import annotations

import argparse
from importlib import import_module

from vaesweep.config.spec import load_spec


def cmd_run(args: argparse.Namespace) -> int:
    spec = load_spec(args.study)  # validated before anything starts or is written
    return import_module("vaesweep.cli.study").run_spec(spec, args)
