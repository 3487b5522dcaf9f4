"""The ``Chart`` every chart function returns, the figure factory they share, and the ``Study`` a report section
reads (analysis/report.py).

A chart is a matplotlib ``Figure`` (drawn on the Agg canvas, no pyplot state, so it renders the
same from the CLI, a test or a notebook, where it displays inline), a one-sentence reading of
what it shows, and the tables behind it. A chart the study cannot support (it did not vary
latent_dim, has no FID-proxy, no checkpoints, ...) is a ``Chart`` without a figure whose reading
says why: the report prints that note in its place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import seaborn as sns
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from vaesweep.study.tables import StudyTables

ACTIVE_COLOR, INACTIVE_COLOR = "#1f5fa8", "#d62728"  # Table 1: inactive variables in red


@dataclass
class Chart:
    key: str  # file stem in the report: <key>.png
    title: str
    reading: str  # one sentence: what the chart shows, or why it was skipped
    figure: Figure | None = None
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def skipped(self) -> bool:
        return self.figure is None

    def _repr_png_(self):  # notebooks: show the figure
        if self.figure is None:
            return None
        from io import BytesIO

        buf = BytesIO()
        self.figure.savefig(buf, format="png", dpi=100)
        return buf.getvalue()


def skip(key: str, title: str, why: str) -> Chart:
    """A chart not drawn, with the one-line note the report shows instead."""
    return Chart(key, title, why)


def new_figure(
    n_panels: int = 1,
    panel_size: tuple[float, float] = (5.0, 4.0),
    ncols: int | None = None,
    sharey: bool = False,
    sharex: bool = False,
):
    """A Figure on the Agg canvas and its axes (a flat list), ``ncols`` panels per row."""
    ncols = min(n_panels, ncols or n_panels)
    nrows = -(-n_panels // ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, sharex=sharex, sharey=sharey).ravel().tolist()
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    return fig, axes[:n_panels]


@dataclass(frozen=True)
class Study:
    """A study as the report's sections read it: each section is a function ``(Study) -> Chart | None`` (None:
    the section does not apply to this study), named in analysis/report.py or by its kind."""

    folder: Path
    tables: StudyTables
    spec: dict  # the spec copy (study.yaml) as a mapping
    chosen: pd.DataFrame  # the trials drawn one by one (analysis/report.py:choose_trials)
    lambda_star: pd.DataFrame | None  # lambda_star.parquet, when the study wrote one


def lines_by_lambda(ax, df: pd.DataFrame, x: str, levels: list, palette: dict, **marks) -> None:
    """One line per lambda level (``lam_level``) of ``n_active`` against ``x``: the mean over seeds and a band
    from their min to max."""
    sns.lineplot(
        df.rename(columns={"lam_level": "λ"}),
        x=x,
        y="n_active",
        hue="λ",
        hue_order=levels,
        palette=palette,
        errorbar=("pi", 100),
        err_kws={"alpha": 0.15},
        ax=ax,
        **marks,
    )
