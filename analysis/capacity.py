"""Model capacity: active variables against latent dimension, and the onset of sparsity.

The paper's methodology (Sec. 7): with the KL term working, "progressively augment the
dimension of the latent space to attain sparsity". The chart draws the number of active
variables (Var[mu_i] > threshold, Table 1) against the latent dimension, one line per lambda
(and per other setting), a panel per architecture, with the y = x line of "all variables used";
``onset_of_sparsity`` finds the latent dimension where the lines leave it. Only trials whose
collapse had settled count (analysis/settled.py): the unsettled ones are drawn hollow and left out.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from . import settled
from .chart import Chart, Study, lines_by_lambda, new_figure, skip
from .design import fmt, frame, span

KEY, TITLE = "capacity", "Active variables against latent dimension"


def onset_of_sparsity(trials: pd.DataFrame, by: list[str], min_inactive: float = 1.0) -> pd.DataFrame:
    """The onset of sparsity: per group, the smallest latent dimension from which variables collapse.

    ``trials`` needs ``latent_dim`` and ``n_inactive`` (one row per trial; repeats over seeds
    allowed); ``by`` names the columns held fixed within a group (e.g. arch, lam).

    For each group and tested latent dimension d, n_inactive is averaged over the group's trials
    (the seeds). d *collapses* when that mean is at least ``min_inactive``. The onset is the
    smallest tested d such that d and every larger tested d collapse: a single collapsed
    variable at a small d followed by full use at a larger d is noise (an undertrained
    trial), not the emergence of sparsity.

    Returns one row per group: the ``by`` columns, ``onset`` (NaN when no tested dimension
    starts the collapse: the study never reached sparsity), ``n_active_at_onset`` (mean over
    seeds) and ``largest_tested``.
    """
    rows = []
    for key, g in trials.groupby(by, sort=True, observed=True, dropna=False) if by else [((), trials)]:
        per_d = g.groupby("latent_dim").agg(n_inactive=("n_inactive", "mean"), n_active=("n_active", "mean"))
        per_d = per_d.sort_index()
        collapsed = (per_d["n_inactive"] >= min_inactive).to_numpy()
        from_here_on = np.logical_and.accumulate(collapsed[::-1])[::-1]  # d and every larger d collapse
        onset = per_d.index[from_here_on][0] if from_here_on.any() else np.nan
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            {
                **dict(zip(by, key)),
                "onset": onset,
                "n_active_at_onset": per_d["n_active"].get(onset, np.nan),
                "largest_tested": per_d.index.max(),
            }
        )
    return pd.DataFrame(rows, columns=[*by, "onset", "n_active_at_onset", "largest_tested"])


def active_vs_latent_dim(trials: pd.DataFrame) -> Chart:
    """Active variables against latent dimension (mean and min-max band over seeds), onset marked."""
    d = frame(trials)
    if not len(d.trials):
        return skip(KEY, TITLE, "No finished trials yet, so there is nothing to draw.")
    if d.trials["latent_dim"].nunique() < 2:
        return skip(
            KEY,
            TITLE,
            f"The study tried one latent dimension only "
            f"({fmt(d.trials['latent_dim'].iloc[0])}); vary latent_dim to see where sparsity starts.",
        )
    by = ["panel", "lam_level", "setting"]
    df, left = settled.split(d.trials)  # a count still moving is no onset (Sec. 3, Fig. 2)
    if not len(df):
        return skip(KEY, TITLE, settled.none_settled(len(left), "onset of sparsity"))
    onset = onset_of_sparsity(df, by)
    n_left = left.groupby(by, observed=True).size().to_dict() if len(left) else {}
    onset["n_left_out (not settled)"] = [n_left.get(tuple(r), 0) for r in onset[by].itertuples(index=False)]
    levels = list(df["lam_level"].cat.categories)
    palette = dict(zip(levels, sns.color_palette("flare", len(levels))))
    style = "setting" if d.settings else None
    fig, axes = new_figure(len(d.panels), (5.4, 4.4), ncols=3, sharey=True)
    dims = sorted(d.trials["latent_dim"].unique())
    for ax, panel in zip(axes, d.panels):
        sub = df[df["panel"] == panel]
        ax.plot(dims, dims, color="0.6", lw=4, alpha=0.35, zorder=0, label="all used (y = x)")
        marks = {"style": style, "markers": True, "dashes": True} if style else {"marker": "o"}
        if len(sub):
            lines_by_lambda(ax, sub, "latent_dim", levels, palette, **marks)
        out = left[left["panel"] == panel]
        if len(out):
            ax.scatter(out["latent_dim"], out["n_active"], **settled.MARK, label=settled.LABEL + ", left out")
        mark = onset[(onset["panel"] == panel) & onset["onset"].notna()]
        for i, (_, r) in enumerate(mark.iterrows()):
            ax.scatter(
                [r["onset"]],
                [r["n_active_at_onset"]],
                s=160,
                marker="v",
                zorder=5,
                color=palette[r["lam_level"]],
                edgecolor="black",
                linewidth=1.2,
                label="onset of sparsity" if i == 0 else None,
            )
        ax.set_xscale("log", base=2)
        ax.set_xticks(dims, [fmt(x) for x in dims])
        ax.minorticks_off()
        ax.set(
            title=f"arch = {panel}",
            xlabel="latent dimension",
            ylim=(0, None),
            ylabel="active variables (mean; band: min–max over seeds)",
        )
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(TITLE)
    table = onset.assign(lam=onset["lam_level"].astype(str)).drop(columns="lam_level")
    table = table.rename(columns={"panel": "arch"})[
        ["arch", "lam", "setting", "onset", "n_active_at_onset", "largest_tested", "n_left_out (not settled)"]
    ]
    if not d.settings:
        table = table.drop(columns="setting")
    if not settled.known(d.trials):  # a study from before the settled column: nothing known to leave out
        table = table.drop(columns="n_left_out (not settled)")
    note = f"{settled.left_out(len(left), len(d.trials))}, hollow circles" if len(left) else ""
    return Chart(KEY, TITLE, settled.with_note(_reading(onset, df), note), fig, {"onset": table})


def _reading(onset: pd.DataFrame, df: pd.DataFrame) -> str:
    top = df["latent_dim"].max()
    at_top = df[df["latent_dim"] == top].groupby(["panel", "lam_level", "setting"], observed=True)["n_active"].mean()
    several = df["panel"].nunique() > 1

    def line(r) -> str:
        return " ".join(str(p) for p in (r["panel"] if several else "", r["lam_level"], r["setting"]) if p)

    found, never = onset[onset["onset"].notna()], onset[onset["onset"].isna()]
    keep = f"at {fmt(top)} the lines keep {span(at_top, '.3g')} active variables on average"
    if not len(found):
        return (
            f"No line leaves the y = x line, so the study has not reached the onset of sparsity up to latent "
            f"dimension {fmt(top)}; try larger latent dimensions or longer training ({keep})."
        )
    starts = ", ".join(f"{fmt(int(r['onset']))} for {line(r)}" for _, r in found.iterrows())
    rest = f", and not up to {fmt(top)} for {', '.join(line(r) for _, r in never.iterrows())}" if len(never) else ""
    return f"Variables start to collapse (onset of sparsity) at latent dimension {starts}{rest}; {keep}."


def section(study: Study) -> Chart:
    return active_vs_latent_dim(study.tables.trials)
