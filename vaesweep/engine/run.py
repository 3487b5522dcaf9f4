"""What every run of the engine offers to whoever drives it (vaesweep/study/trainables.py under Ray) and to its
checkpoints (vaesweep/engine/checkpoints.py): ``TrialRun`` (one configuration), ``PackedRun`` (K configurations
in batched kernels) and ``NoiseExperiment`` (a TrialRun through the Sec. 5 phases)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class Run(Protocol):
    packed: bool  # K configurations per Ray trial: a list of K reports an epoch, one checkpoint file each
    k: int  # configurations: 1 unless packed
    epoch: int  # epochs trained

    def epochs(self) -> Iterator[dict | list[dict | None]]:
        """Train to the final epoch, yielding each epoch's report (a packed run's: one per configuration)."""

    def final_metrics(self) -> dict | list[dict | None] | None:
        """The last epoch's report again, or None before any."""

    @property
    def finished(self) -> bool:
        """Whether the run has trained its final epoch (or ended otherwise: diverged, settled)."""

    def state_dicts(self) -> list[dict]:
        """The run's whole state: one state dict per configuration (a plain run's list holds one)."""

    def load_state_dicts(self, states: list[dict]) -> None:
        """Restore what ``state_dicts`` gave."""
