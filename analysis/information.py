"""Mutual information I_q(x; z) against lambda and latent dimension, beside the active count (issue 26).

The posterior-collapse literature (He et al. 2019, "Lagging inference networks") tabulates the KL, the number
of active units and the mutual information between data and code side by side: a collapsed model has MI ~ 0
even when its KL is not. Per architecture, two panels share the x axis (lambda when the study varied it, else
the latent dimension) and one line per value of the other: ``mi`` (vaesweep/engine/information.py, on the
first mi_images eval images, with its ceiling log N dashed) and ``n_active``. The table beside it gives the
means over seeds of mi, the per-variable MIs summed (``mi_i``, from the latents table: far from the ceiling
where the joint MI is not), n_active, the ELBO and nll_iw. Unsettled trials count, marked in the table.
"""

from __future__ import annotations

import pandas as pd
import seaborn as sns

from . import settled
from .chart import Chart, Study, new_figure, skip
from .design import fmt, frame

KEY, TITLE = "information", "Mutual information I(x; z) against λ and latent dimension, beside the active count"


def mi_chart(trials: pd.DataFrame, latents: pd.DataFrame) -> Chart:
    d = frame(trials)
    if "mi" not in trials or not len(d.trials) or d.trials["mi"].isna().all():
        return skip(KEY, TITLE, "No trial measured the mutual information (mi_images: 0, or recorded before it).")
    df = d.trials[d.trials["mi"].notna()].copy()
    if len(latents) and "mi_i" in latents:
        df["mi_sum"] = df["trial_id"].map(latents.groupby("trial_id")["mi_i"].sum(min_count=1))
    x, hue = ("lam", "latent_dim") if df["lam"].nunique() > 1 else ("latent_dim", "lam")
    fig, axes = new_figure(2 * len(d.panels), (4.8, 3.8), ncols=2)
    for i, panel in enumerate(d.panels):
        sub = df[df["panel"] == panel]
        for ax, y, label in (
            (axes[2 * i], "mi", "I(x; z) (nats, joint)"),
            (axes[2 * i + 1], "n_active", "active variables"),
        ):
            if len(sub):
                sns.lineplot(
                    sub, x=x, y=y, hue=hue, marker="o", palette="flare", errorbar=("pi", 100), ax=ax, legend="full"
                )
            if y == "mi" and "mi_log_n" in sub and sub["mi_log_n"].notna().any():
                ax.axhline(float(sub["mi_log_n"].max()), color="0.5", ls="--", lw=1, label="ceiling log N")
                ax.legend(fontsize=8, title=hue)
            if x == "lam":
                ax.set_xscale("log")
            ticks = sorted(df[x].unique())
            ax.set_xticks(ticks, [fmt(t) for t in ticks])
            ax.minorticks_off()
            ax.set(title=f"arch = {panel}", xlabel="λ" if x == "lam" else "latent dimension", ylabel=label)
    fig.suptitle(TITLE)
    keys = ["panel", "lam", "latent_dim"]
    cols = [c for c in ("mi", "mi_log_n", "mi_sum", "n_active", "kl", "elbo", "nll_iw") if c in df]
    table = df.groupby(keys, observed=True)[cols].mean().reset_index().rename(columns={"panel": "arch"})
    table["seeds"] = df.groupby(keys, observed=True).size().to_numpy()
    if settled.known(df):
        table["not_settled"] = df.assign(u=settled.unsettled(df)).groupby(keys, observed=True)["u"].sum().to_numpy()
    return Chart(KEY, TITLE, _reading(df, x), fig, {"information": table})


def _reading(df: pd.DataFrame, x: str) -> str:
    ceiling = float(df["mi_log_n"].max()) if "mi_log_n" in df else float("nan")
    near = int((df["mi"] > ceiling - 0.1).sum())
    lo, hi = df.loc[df["mi"].idxmin()], df.loc[df["mi"].idxmax()]
    what = "λ" if x == "lam" else "latent dimension"
    text = (
        f"I(x; z) ranges from {lo['mi']:.3g} nats ({lo['arch']}, λ={fmt(lo['lam'])}, d={fmt(lo['latent_dim'])}, "
        f"{int(lo['n_active'])} active) to {hi['mi']:.3g} ({hi['arch']}, λ={fmt(hi['lam'])}, "
        f"d={fmt(hi['latent_dim'])}, {int(hi['n_active'])} active) across {what}; {near} of {len(df)} trials read "
        f"within 0.1 of the estimator's ceiling log N = {ceiling:.3g} (their codes tell every eval image apart: the "
        "joint MI saturates there, the summed per-variable mi_i of the table do not)"
    )
    n_moving = int(settled.unsettled(df).sum())
    return settled.with_note(text + ".", settled.not_settled(n_moving, len(df), "counted, see not_settled"))


def section(study: Study) -> Chart:
    return mi_chart(study.tables.trials, study.tables.latents)
