"""Ending trials once their answer is final, through Ray Tune's own ``Stopper`` API.

A trial's final report carries ``stopped_reason`` (vaesweep/engine/trial.py: ``settled`` with
``stop: {when: settled}`` once the collapse has settled, ``budget`` at its last epoch); the stopper ends
the Ray trial on that report, so Ray never asks it for another epoch. A packed report ends its Ray trial
once every configuration has ended (its report set, None: ended earlier, or diverged).

    tune.RunConfig(stop=SettledStopper())
"""

from __future__ import annotations

from ray import tune


def ended(report: dict | None) -> bool:
    """Whether a configuration's report is its last: final (``stopped_reason``), diverged, or None (a packed
    configuration that ended in an earlier epoch)."""
    return report is None or "diverged" in report or report.get("stopped_reason") is not None


class SettledStopper(tune.Stopper):
    """Stops a Ray trial on the report whose ``stopped_reason`` is set (a pack's: every configuration's)."""

    def __call__(self, trial_id: str, result: dict) -> bool:
        if "packed" in result:
            return all(ended(r) for r in result["packed"])
        return result.get("stopped_reason") is not None

    def stop_all(self) -> bool:
        return False
