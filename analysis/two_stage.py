"""Where the two-stage VAE helps: fid_prior against fid_two_stage over lambda and latent dimension.

Sec. 7: "if the reconstruction error is low but generation is bad, it is a clear indication of a
mismatch between the aggregate posterior Q(z) and the prior P(z); in this case, a simple two-stage
approach as described in [7] might suffice". A study run with ``two_stage: true``
(vaesweep/engine/two_stage.py, Dai & Wipf 2019) has, per trial, ``fid_prior`` (z ~ N(0, I) decoded) and
``fid_two_stage`` (u ~ N(0, I) through the second stage, then decoded). Per architecture, the left
panel draws both against lambda (or the latent dimension when lambda was fixed), one colour per
latent dimension, and the baseline ``fid_q_gaussian`` (z from the Gaussian with Q(z)'s Sec. 4
moments) when present; the right panel maps the improvement fid_prior - fid_two_stage (mean over
seeds) over lambda x latent dimension: positive where the second stage helps. Trials whose
collapse had not settled (vaesweep/engine/settle.py) get a hollow grey circle on their points and are
counted per cell in the table.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from . import settled
from .chart import Chart, Study, new_figure, skip
from .design import fmt, frame
from .fid import fid_axis

KEY, TITLE = "two_stage", "Two-stage VAE (Dai & Wipf 2019): FID-proxy of prior vs two-stage samples"
KINDS = {"fid_prior": "prior", "fid_two_stage": "two-stage"}
BASELINE = {"fid_q_gaussian": "Gaussian with Q(z)'s moments"}  # drawn when the trials have it


def two_stage_chart(trials: pd.DataFrame) -> Chart:
    """fid_prior and fid_two_stage against lambda / latent dimension, and their difference as a map."""
    d = frame(trials)
    df = d.trials
    if not all(c in df for c in KINDS) or not len(df := df.dropna(subset=list(KINDS))):
        return skip(
            KEY,
            TITLE,
            "The study has no fid_two_stage values (set two_stage: true with fid: true), so this chart is left out.",
        )
    df = df.assign(improvement=df["fid_prior"] - df["fid_two_stage"], _unsettled=settled.unsettled(df))
    x = "lam" if df["lam"].nunique() > 1 or df["latent_dim"].nunique() == 1 else "latent_dim"
    kinds = {**KINDS, **{k: v for k, v in BASELINE.items() if k in df and df[k].notna().any()}}
    cells = (
        df.groupby(["panel", "lam_level", "latent_dim"], observed=True)
        .agg({**{k: "mean" for k in [*kinds, "improvement"]}, "_unsettled": "sum"})
        .reset_index()
    )  # lam_level: one row per lambda (log bins for a random search), mean over seeds
    dims = sorted(df["latent_dim"].unique())
    colors = dict(zip([fmt(v) for v in dims], sns.color_palette("viridis", len(dims) + 1)))
    long = df.melt(
        id_vars=["panel", "lam", "latent_dim", "seed", "_unsettled"],
        value_vars=list(kinds),
        var_name="kind",
        value_name="score",
    ).dropna(subset=["score"])
    long["kind"] = long["kind"].map(kinds)
    long["latent dim"] = pd.Categorical(long["latent_dim"].map(fmt), [fmt(v) for v in dims], ordered=True)
    fig, axes = new_figure(2 * len(d.panels), (5.4, 4.2), ncols=2)
    for n, panel in enumerate(d.panels):
        left, right = axes[2 * n], axes[2 * n + 1]
        moving = long[(long["panel"] == panel) & long["_unsettled"]]
        if len(moving):  # first, so seaborn's legend below takes it in
            left.scatter(moving[x], moving["score"], **settled.MARK, label=settled.LABEL)
        sns.lineplot(
            long[long["panel"] == panel],
            x=x,
            y="score",
            hue="latent dim",
            palette=colors,
            style="kind",
            style_order=list(kinds.values()),
            markers=True,
            errorbar=("pi", 100),
            err_kws={"alpha": 0.15},
            ax=left,
        )
        fid_axis(left, x, df[x], f"arch = {panel}")
        sns.move_legend(left, "best", fontsize=7)
        grid = cells[cells["panel"] == panel].pivot(index="lam_level", columns="latent_dim", values="improvement")
        grid = grid.sort_index(ascending=False)  # largest lambda on top, as the law heatmap
        grid.index, grid.columns = [str(v) for v in grid.index], [fmt(v) for v in grid.columns]
        sns.heatmap(
            grid,
            ax=right,
            annot=True,
            fmt=".3g",
            cmap="RdYlGn",
            center=0,
            linewidths=0.5,
            linecolor="white",
            cbar_kws={"label": "fid_prior − fid_two_stage"},
            annot_kws={"size": 8},
        )
        right.set(
            title=f"arch = {panel}: improvement (> 0: two-stage helps)", xlabel="latent dimension", ylabel=""
        )  # the row labels read λ=...
        right.tick_params(axis="y", rotation=0)
    fig.suptitle(TITLE)
    table = cells.assign(lam=cells["lam_level"].astype(str)).drop(columns="lam_level")
    table = table[["panel", "lam", "latent_dim", *kinds, "improvement", "_unsettled"]].rename(
        columns={"improvement": "fid_prior - fid_two_stage", "_unsettled": "n_not_settled"}
    )
    reading = settled.with_note(_reading(cells), settled.not_settled(int(df["_unsettled"].sum()), len(df)))
    return Chart(KEY, TITLE, reading, fig, {"two_stage": table})


def _reading(cells: pd.DataFrame) -> str:
    helped = cells[cells["improvement"] > 0]
    best = cells.loc[cells["improvement"].idxmax()]
    text = (
        f"The second stage lowers the FID-proxy in {len(helped)} of {len(cells)} settings, most at "
        f"{best['lam_level']} and latent dimension {fmt(best['latent_dim'])} ({best['panel']}): "
        f"{best['fid_prior']:.3g} → {best['fid_two_stage']:.3g}"
    )
    by_lam = cells.groupby("lam_level", observed=True)["improvement"].mean().sort_index()
    if len(by_lam) > 1:
        text += (
            f"; the mean improvement is {by_lam.iloc[0]:.3g} at the smallest {by_lam.index[0]} and "
            f"{by_lam.iloc[-1]:.3g} at the largest {by_lam.index[-1]}"
        )
    return text + "."


def section(study: Study) -> Chart | None:
    """Only for a study in which some trial set two_stage: true (vaesweep/engine/two_stage.py)."""
    trials = study.tables.trials
    asked = "fid_two_stage" in trials or ("two_stage" in trials and trials["two_stage"].eq(True).any())
    return two_stage_chart(trials) if asked else None
