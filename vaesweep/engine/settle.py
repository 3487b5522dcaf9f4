"""Has a trial's collapse settled? A collapse number counts only once it has stopped moving.

Sec. 3, Fig. 2: the variables collapse one by one *along training* (the x axis is minibatches);
Table 1 is the picture "at the end of training", read once the set of active variables has
stopped changing. A trial stopped before that reports a count that is still moving, which is not
the paper's phenomenon. So at every evaluation i (step s_i, set of active variables A_i by index,
variance-law residual r_i = law_residual_max, Sec. 4) a trial records:

- the *window*: the shortest suffix of evaluations j..i holding at least ``patience`` evaluations
  and spanning s_i - s_j >= ``min_steps`` minibatches; none yet: not settled;
- ``settled`` at i iff A_j = ... = A_i (the same *set* of indices, not just the same count) and the
  residual has stopped drifting: |mean of the window's last half - mean of its first half| <= ``law_tol``
  (halves of floor(n/2) evaluations). A drift, not max - min: law_residual_max is a maximum over
  variables of statistics on a finite eval split, and jumps by +-0.05 from one evaluation to the next
  even on a plateau (mnist5k, dense-16: 0.30-0.40 for 4,000 minibatches); max - min over a window of
  many evaluations would then never hold, while a real trend (full MNIST, dense-16, lambda 1: 0.20 at
  minibatch 3,000 to 0.07 at 11,000) still shows as a drift of the half means;
- ``settled_step``: the step of the first evaluation of the current unbroken run of settled
  evaluations (the minibatch at which the trial could first tell it had settled); None while not
  settled. A variable that revives (the set changes) breaks the run until a new window holds.

A trial that stops once settled (``stop: {when: settled}``) also waits for its *answer*: the Sec. 4 verdict
(kl_working) the same at every evaluation of the window (``verdict_steady``), since a residual creeping across
law_tol still passes the drift test. Replayed on a 3-seed dense sweep of mnist5k (benchmarks/results/stop_replay.md:
45 trials, 200-epoch budgets), the verdict at the first settled evaluation disagreed with the budget's in 7 trials,
the steady one in 1 (a residual ending at 0.148 against law_tol 0.15), for 75 % instead of 57 % of the
trial-epochs; on four full-MNIST and conv studies, 9 of 37 against 3. A slow trend that crosses law_tol only
after the window is not seen.

``settle_history`` is the rule over a whole list of evaluations; ``SettleTracker`` applies it one
evaluation at a time, its state plain data (saved in a trial's checkpoint).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

# (step, indices of the active variables, law_residual_max[, kl_working: the Sec. 4 verdict])
Evaluation = tuple[int, Iterable[int], float] | tuple[int, Iterable[int], float, bool | None]


@dataclass
class SettleTracker:
    """The settle rule applied evaluation by evaluation. ``evals`` keeps only the evaluations a
    future window can start from (windows only move forward), as (step, sorted indices, residual,
    verdict or None)."""

    patience: int
    min_steps: int
    law_tol: float
    evals: list[tuple[int, list[int], float, bool | None]] = field(default_factory=list)
    settled_step: int | None = None

    @classmethod
    def for_config(cls, cfg) -> SettleTracker:
        """A tracker with a TrialConfig's ``settle_patience``, ``settle_min_steps``, ``settle_law_tol``."""
        return cls(cfg.settle_patience, cfg.settle_min_steps, cfg.settle_law_tol)

    @property
    def settled(self) -> bool:
        return self.settled_step is not None

    def status(self) -> dict:
        """The two columns every report carries: ``settled`` and ``settled_step``."""
        return {"settled": self.settled, "settled_step": self.settled_step}

    @property
    def verdict_steady(self) -> bool:
        """Whether every evaluation of the settled window gave the same Sec. 4 verdict (kl_working); False
        while not settled. Evaluations observed without a verdict do not count against it."""
        verdicts = {w for *_, w in self.evals if w is not None}
        return self.settled and len(verdicts) <= 1

    def stops(self, step: int, min_steps: int = 0) -> bool:
        """The rule of ``stop: {when: settled}``: settled, with the same Sec. 4 verdict over the settle window
        (``verdict_steady``), after at least ``min_steps`` minibatches (a TrialConfig's stop_min_steps)."""
        return self.verdict_steady and step >= min_steps

    def observe(self, step: int, active: Iterable[int], residual: float, working: bool | None = None) -> dict:
        """Add evaluation (step, active indices, law_residual_max, kl_working); returns ``status()`` after it."""
        verdict = None if working is None else bool(working)
        self.evals.append((int(step), sorted(int(a) for a in active), float(residual), verdict))
        start = self._window_start()
        if start is None:
            self.settled_step = None
            return self.status()
        del self.evals[:start]  # later windows start here or later
        sets = {tuple(a) for _, a, _, _ in self.evals}
        residuals = [r for _, _, r, _ in self.evals]
        still = len(sets) == 1 and not any(math.isnan(r) for r in residuals) and law_drift(residuals) <= self.law_tol
        if not still:
            self.settled_step = None
        elif self.settled_step is None:  # a new run of settled evaluations starts here
            self.settled_step = self.evals[-1][0]
        return self.status()

    def _window_start(self) -> int | None:
        """Index in ``evals`` of the shortest suffix with >= patience evaluations spanning >= min_steps."""
        last = self.evals[-1][0]
        for j in range(len(self.evals) - self.patience, -1, -1):
            if last - self.evals[j][0] >= self.min_steps:
                return j
        return None

    def state_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_state(cls, state: dict) -> SettleTracker:
        # a checkpoint from before the verdict holds (step, active, residual)
        evals = [(e[0], list(e[1]), e[2], e[3] if len(e) > 3 else None) for e in state["evals"]]
        return cls(**{**state, "evals": evals})

    @classmethod
    def from_checkpoint(cls, checkpoint: dict, cfg) -> SettleTracker:
        """The tracker saved in a trial's checkpoint (its ``"settle"`` entry); a checkpoint from before
        the settle columns holds no active sets, so the rule starts afresh with ``cfg``'s settings."""
        return cls.from_state(checkpoint["settle"]) if "settle" in checkpoint else cls.for_config(cfg)


def law_drift(residuals: list[float]) -> float:
    """|mean of the last half - mean of the first half| of a window's residuals (halves of n // 2)."""
    half = len(residuals) // 2
    return abs(sum(residuals[-half:]) / half - sum(residuals[:half]) / half)


def settle_history(evaluations: Iterable[Evaluation], patience: int, min_steps: int, law_tol: float) -> list[dict]:
    """``{"settled", "settled_step"}`` at every evaluation of a history, by the rule above."""
    tracker = SettleTracker(patience, min_steps, law_tol)
    return [tracker.observe(*evaluation) for evaluation in evaluations]


def active_indices(latents: list[dict]) -> list[int]:
    """The indices of the active variables of a per-variable table (vaesweep.engine.latents)."""
    return [r["latent"] for r in latents if r["active"]]
