"""Experiment kinds: what each trial of a study runs, by name (``experiment: <name>`` in the spec).

Modelled on Ray Tune's search-algorithm registry (ray/tune/search/__init__.py): a mapping from
name to entry, whose code is named by import path and imported only where it runs. This package
imports pydantic and vaesweep.config's leaf modules only, never torch or Ray, so the spec checks a
kind when it is loaded. Each kind declares in its one module a ``Kind`` (vaesweep/experiments/kind.py):
its settings model (written under ``<name>: {...}`` in the spec), its spec check, its Ray trainable(s)
(whether it packs), its driver if it runs phases of trials, and its report sections.

Adding a kind touches:
  1. vaesweep/experiments/<name>.py, declaring ``KIND = Kind(...)``;
  2. one line of KINDS below;
  3. only if it trains differently: its engine code (vaesweep/engine/) and Ray trainable (vaesweep/study/);
     a kind made of several phases of ordinary trials names a ``driver`` instead (experiment: method).
The spec then validates its settings, run_study hands them to its trainable under ``config["_<name>"]``,
the pack rules ask ``packable``, and the report draws its sections first, before those every study has
(analysis/report.py:sections).
"""

from __future__ import annotations

import importlib
from typing import Any

from vaesweep.config.errors import SpecError
from vaesweep.experiments import method, noise, train
from vaesweep.experiments.kind import Kind

KINDS: dict[str, Kind] = {"train": train.KIND, "noise": noise.KIND, "method": method.KIND}


def kind(name: str) -> Kind:
    """The registered kind ``name``; SpecError naming ``experiment`` and the known kinds if none."""
    if name not in KINDS:
        raise SpecError(f"experiment: unknown kind {name!r}; give one of {', '.join(KINDS)}")
    return KINDS[name]


def resolve(path: str) -> Any:
    """The object an import path "package.module:name" names (a kind's trainable, driver or report section)."""
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)
