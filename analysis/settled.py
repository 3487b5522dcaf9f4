"""Which trials' collapse had settled (vaesweep/engine/settle.py), as the charts need it.

Sec. 3, Fig. 2: the variables collapse along training and Table 1 is read once the picture stops
moving; a count taken from a trial still changing is not the paper's phenomenon. So the onset of
sparsity, the law heatmap and lambda* read settled trials only and say how many they left out, and
every chart marks the unsettled trials (hollow grey markers, hatched cells, "not settled" in
titles). A study recorded before the ``settled`` column has no such knowledge: every trial counts,
and the report's first line says the status is unknown.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from vaesweep.config.folder import SETTLED as COLUMN
from vaesweep.config.folder import counts
from vaesweep.config.folder import settled_known as known

LABEL = "not settled (hollow)"
MARK = {"marker": "o", "s": 70, "facecolors": "none", "edgecolors": "0.3", "linewidths": 1.4, "zorder": 6}
HATCH = {"fill": False, "hatch": "///", "edgecolor": "0.45", "linewidth": 0}
FIX = (
    "raise epochs (the collapse settles after ~4,000 minibatches on mnist5k) or relax settle_patience / "
    "settle_min_steps / settle_law_tol"
)


def unsettled(trials: pd.DataFrame) -> pd.Series:
    """True for the trials that do not count (vaesweep/config/folder.py: not settled); all False when the status
    is unknown."""
    return ~counts(trials)


def split(trials: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the trials that count: settled, or all when unknown; the unsettled ones left out)."""
    out = unsettled(trials)
    return trials[~out], trials[out]


def left_out(n_left: int, n_total: int) -> str:
    """'3 of 16 trials left out: not settled' (empty when none was)."""
    return f"{n_left} of {n_total} trials left out: not settled" if n_left else ""


def not_settled(n_moving: int, n_total: int, how: str = "hollow circles") -> str:
    """'2 of 9 trials not settled: hollow circles' (empty when none was): how a chart marks them."""
    return f"{n_moving} of {n_total} trials not settled: {how}" if n_moving else ""


def with_note(reading: str, note: str) -> str:
    """A chart's reading with ``note`` in parentheses before its full stop (unchanged without a note)."""
    return f"{reading.removesuffix('.')} ({note})." if note else reading


def none_settled(n_total: int, what: str) -> str:
    """The note of a chart that reads settled trials only when none of them settled."""
    return (
        f"All {n_total} trials left out: not settled (their active set or variance-law residual was "
        f"still changing at the end), so no {what} is read; {FIX}."
    )


def flag(row) -> str:
    """' (not settled)' for a trial row whose collapse had not settled, else '' (settled or unknown)."""
    if COLUMN not in row:
        return ""
    v = row[COLUMN]
    return "" if isinstance(v, (bool, np.bool_)) and bool(v) else " (not settled)"


def headline(trials: pd.DataFrame) -> str | None:
    """The report's first line about settling, or None when every finished trial settled."""
    done = trials[trials["status"] == "done"] if "status" in trials else trials
    if not len(done):
        return None
    if not known(done):
        return (
            "Settled status unknown: this study's tables have no settled column (recorded before "
            "vaesweep checked it), so its collapse numbers may come from trials still changing."
        )
    n = int(unsettled(done).sum())
    if n == len(done):
        return (
            "No trial settled: their active set was still changing at the end. Raise epochs (collapse "
            "settles after ~4,000 minibatches on mnist5k) or relax settle_*; numbers below are not the "
            "paper's phenomenon."
        )
    if n:
        return (
            f"{n} of {len(done)} finished trials did not settle: they are marked (hollow markers, "
            "hatched cells, 'not settled') and left out of the onset of sparsity, law heatmap and λ*."
        )
    return None
