"""What an experiment kind declares (one ``Kind`` per module of vaesweep/experiments/)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel

# What a kind's check receives: the vaesweep.config.spec.StudySpec being validated (named, not imported:
# config.spec reads this registry, so the registry must not import it back).
StudySpec = Any


def no_check(spec: StudySpec) -> None:
    """A kind that runs whatever study the spec's own rules allow."""


@dataclass(frozen=True)
class Kind:
    """One kind of trial a study runs (``experiment: <name>``): all its parts, named here. Code is named by
    import path, "package.module:name", resolved only where it runs (vaesweep.experiments.resolve), so the spec
    can check a kind without importing torch or Ray; tests/test_layout.py resolves every entry and checks its
    layer (trainables and drivers in vaesweep.study, sections in analysis)."""

    name: str
    trainable: str  # the Ray function trainable of one configuration, e.g. "vaesweep.study.trainables:trainable"
    settings: type[BaseModel] | None = None  # the settings written under ``<name>: {...}`` in the spec
    check: Callable[[StudySpec], None] = no_check  # raises ValueError naming the field of a spec it cannot run
    packed_trainable: str | None = None  # the trainable of K configurations per Ray trial, if the kind packs
    sections: tuple[str, ...] = ()  # the report's sections of this kind (analysis/report.py:sections gives their place)
    # each called with the analysis.chart.Study -> Chart, or None where it does not apply
    driver: str | None = None  # a kind made of several phases of trials: run_study calls driver(spec, out, quiet)
    # instead of one Tuner of ``trainable`` (e.g. "vaesweep.study.method:run_method")

    @property
    def key(self) -> str:
        """Where a trial's config carries the settings (trial fields ignore "_" keys)."""
        return f"_{self.name}"

    @property
    def packable(self) -> bool:
        return self.packed_trainable is not None
