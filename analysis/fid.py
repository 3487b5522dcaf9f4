"""Generation quality: the FID-proxy against lambda and latent dimension.

The trials table carries ``fid_prior`` (prior samples vs data), ``fid_recon`` (reconstructions)
and ``fid_zeroed`` (prior samples with the inactive variables zeroed, Fig. 3) when the study
computed them; lower is better. Each present kind is one line style; lambda on the x axis and
one colour per latent dimension (or latent dimension on the x axis when lambda was fixed).
Trials whose collapse had not settled (vaesweep/engine/settle.py) get a hollow grey circle on their point.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from . import settled
from .chart import Chart, Study, new_figure, skip
from .design import fmt, frame

KEY, TITLE = "fid", "FID-proxy against λ and latent dimension"
FID_COLUMNS = ("fid_prior", "fid_recon", "fid_zeroed")


def fid_chart(trials: pd.DataFrame) -> Chart:
    d = frame(trials)
    df = d.trials
    kinds = [c for c in FID_COLUMNS if c in df and df[c].notna().any()]
    if not kinds:
        return skip(
            KEY,
            TITLE,
            "The study has no FID-proxy values (fid_prior / fid_recon / fid_zeroed), so this chart is left out.",
        )
    x = "lam" if df["lam"].nunique() > 1 else "latent_dim" if df["latent_dim"].nunique() > 1 else None
    if x is None:
        return skip(
            KEY,
            TITLE,
            "The study fixed both λ and the latent dimension; the FID-proxy of each trial is in the trials table.",
        )
    hue = "latent_dim" if x == "lam" and df["latent_dim"].nunique() > 1 else None
    df = df.assign(_unsettled=settled.unsettled(df))
    ids = ["panel", "lam", "latent_dim", "seed", "n_inactive", "_unsettled"]
    long = df.melt(id_vars=ids, value_vars=kinds, var_name="kind", value_name="score").dropna(subset=["score"])
    long["kind"] = long["kind"].str.removeprefix("fid_")
    dims = sorted(long["latent_dim"].unique())
    long["latent dim"] = pd.Categorical(long["latent_dim"].map(fmt), [fmt(v) for v in dims], ordered=True)
    colors = dict(zip([fmt(v) for v in dims], sns.color_palette("viridis", len(dims) + 1)))  # no pale yellow end
    fig, axes = new_figure(len(d.panels), (5.4, 4.2), ncols=3, sharey=True)
    for i, (ax, panel) in enumerate(zip(axes, d.panels)):
        sub = long[long["panel"] == panel]
        moving = sub[sub["_unsettled"]]
        if len(moving):  # first, so seaborn's legend below takes it in
            ax.scatter(moving[x], moving["score"], **settled.MARK, label=settled.LABEL)
        sns.lineplot(
            sub,
            x=x,
            y="score",
            hue="latent dim" if hue else None,
            palette=colors if hue else None,
            style="kind",
            markers=True,
            errorbar=("pi", 100),
            err_kws={"alpha": 0.15},
            ax=ax,
        )
        fid_axis(ax, x, sub[x], f"arch = {panel}", "FID-proxy, lower is better (band: min–max over seeds)")
        if i == len(d.panels) - 1:  # one legend, beside the last panel
            sns.move_legend(ax, "upper left", bbox_to_anchor=(1.02, 1), fontsize=8, frameon=False)
        else:
            ax.get_legend().remove()
    fig.suptitle(TITLE)
    reading = settled.with_note(_reading(long, kinds), settled.not_settled(int(df["_unsettled"].sum()), len(df)))
    return Chart(KEY, TITLE, reading, fig)


def fid_axis(ax, x: str, values: pd.Series, title: str, ylabel: str = "FID-proxy, lower is better") -> None:
    """A FID-proxy panel against ``x`` (lam or latent_dim): a log axis with a tick at each of its ``values``."""
    values = sorted(values.unique())
    ax.set_xscale("log", base=2 if x == "latent_dim" else 10)
    ax.set_xticks(values, [fmt(v) for v in values])
    ax.minorticks_off()
    ax.set(title=title, xlabel="λ" if x == "lam" else "latent dimension", ylabel=ylabel)


def _reading(long: pd.DataFrame, kinds: list[str]) -> str:
    kind = "prior" if "fid_prior" in kinds else kinds[0].removeprefix("fid_")
    mean = long[long["kind"] == kind].groupby(["panel", "lam", "latent_dim"])["score"].mean()
    (panel, lam, dim), best = mean.idxmin(), mean.min()
    worst = mean.max()
    text = (
        f"The lowest {kind} FID-proxy, {best:.3g}, is at λ={fmt(lam)} and latent dimension {fmt(dim)} "
        f"({panel}); the highest is {worst:.3g}"
    )
    sparse = long[long["n_inactive"] > 0]
    if {"fid_prior", "fid_zeroed"} <= set(kinds) and len(sparse):
        both = sparse.pivot_table(index=["panel", "lam", "latent_dim", "seed"], columns="kind", values="score")
        gap = float(np.nanmedian(np.abs(both["zeroed"] - both["prior"])))
        text += (
            f"; in the {len(both)} trials with inactive variables, zeroing them moves it by a median {gap:.2g} (Fig. 3)"
        )
    return text + "."


def section(study: Study) -> Chart:
    return fid_chart(study.tables.trials)
