"""Per-variable views of chosen trials: Table 1, Fig. 2 and the reconstruction gain against KL (Sec. 5).

- ``table1``: per latent variable Var[mu_i] ("variance") and E[sigma_i^2] side by side,
  inactive variables in red (Table 1: var_mu ~ 0 and mean sigma^2 ~ 1);
- ``var_mu_history``: Fig. 2, Var[mu_i] of every variable along training, x in minibatches,
  from the minibatch trace when the study recorded one (track_every), else from the
  per-epoch evaluations;
- ``gain_vs_kl``: Sec. 5, each variable's reconstruction gain (recon error with z_i zeroed
  minus recon error with every variable) against its KL divergence: a variable whose gain
  falls below its KL cost collapses.

A chosen trial whose collapse had not settled (vaesweep/engine/settle.py) says "(not settled)" in its
title and reading; Fig. 2 marks the minibatch at which a trial settled; in the gain-against-KL
scatter the variables of unsettled trials are hollow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from vaesweep.config.trial import recipe

from . import settled
from .chart import ACTIVE_COLOR, INACTIVE_COLOR, Chart, Study, new_figure, skip
from .design import fmt, frame, span, with_defaults

TABLE1_COLUMNS = ["latent", "var_mu", "mean_sigma2", "law", "mean_mu", "kl", "recon_gain", "mi_i", "active"]


def describe_trial(row) -> str:
    """'dense, d=16, λ=1, init torch, seed 0 (trial 1a2b_00003)': with its training choices (``recipe``)."""
    return (
        f"{row['arch']}, d={fmt(row['latent_dim'])}, λ={fmt(row['lam'])}, {recipe(row)}, seed {fmt(row['seed'])} "
        f"(trial {row['trial_id']})"
    )


def _chosen_rows(chosen: pd.DataFrame) -> list:
    return [r for _, r in with_defaults(chosen).iterrows()]


# --- Table 1 --------------------------------------------------------------------------------------


def table1(latents: pd.DataFrame, chosen: pd.DataFrame) -> Chart:
    """Table 1 for each chosen trial: a bar chart of var_mu and mean_sigma2 per variable, and the table."""
    key, title = "table1", "Table 1: variance of μ and mean σ² per latent variable"
    rows = [r for r in _chosen_rows(chosen) if (latents["trial_id"] == r["trial_id"]).any()] if len(latents) else []
    if not rows:
        return skip(key, title, "No chosen trial has per-variable results (latents table).")
    widest = max(int((latents["trial_id"] == r["trial_id"]).sum()) for r in rows)
    fig, axes = new_figure(len(rows), (max(6.0, 0.42 * widest + 2.5), 3.6), ncols=1)
    tables, parts = {}, []
    for ax, row in zip(axes, rows):
        t = latents[latents["trial_id"] == row["trial_id"]].sort_values("latent")
        _bars(ax, t)
        n_in = int((~t["active"]).sum())
        ax.set_title(
            f"{describe_trial(row)}: {n_in} of {len(t)} variables inactive (red){settled.flag(row)}",
            fontsize=10,
            color="0.4" if settled.flag(row) else "black",
        )
        table = t[[c for c in TABLE1_COLUMNS if c in t]].reset_index(drop=True)
        if settled.known(chosen):  # the trial's status on every row: Table 1 counts only once settled
            table["settled"] = not settled.flag(row)
        tables[f"table1_{row['trial_id']}"] = table
        parts.append(_table1_reading(t, row) + settled.flag(row))
    reading = "; ".join(parts)
    return Chart(key, title, reading[0].upper() + reading[1:] + ".", fig, tables)


def _bars(ax, t: pd.DataFrame) -> None:
    x = np.arange(len(t))
    for i, active in enumerate(t["active"]):
        if not active:
            ax.axvspan(i - 0.5, i + 0.5, color=INACTIVE_COLOR, alpha=0.12, lw=0)
    ax.bar(x - 0.2, t["var_mu"], 0.4, color="#4c72b0", label="Var[μ] (variance)")
    ax.bar(x + 0.2, t["mean_sigma2"], 0.4, color="#dd8452", label="mean σ²")
    ax.axhline(1.0, color="0.4", ls=":", lw=1)
    ax.set_xticks(x, [str(v) for v in t["latent"]])
    for label, active in zip(ax.get_xticklabels(), t["active"]):
        label.set_color(ACTIVE_COLOR if active else INACTIVE_COLOR)
    top = float(max(t["var_mu"].max(), t["mean_sigma2"].max(), 1.0))
    ax.set(xlabel="latent variable", ylabel="value", xlim=(-0.6, len(t) - 0.4), ylim=(0, 1.3 * top))
    handles = [*ax.get_legend_handles_labels()[0], Patch(color=INACTIVE_COLOR, alpha=0.25, label="inactive")]
    ax.legend(handles=handles, fontsize=8, loc="upper right", ncols=3)  # in the headroom above the bars


def _table1_reading(t: pd.DataFrame, row) -> str:
    act, ina = t[t["active"]], t[~t["active"]]
    where = f"in {row['arch']} d={fmt(row['latent_dim'])} λ={fmt(row['lam'])}"
    if not len(ina):
        return f"{where} every variable is active (Var[μ] {span(act['var_mu'])})"
    return (
        f"{where} the {len(ina)} inactive variables have Var[μ] ≤ {ina['var_mu'].max():.2g} and mean σ² "
        f"≈ {ina['mean_sigma2'].mean():.2f} (ignored by the generator), the {len(act)} active ones Var[μ] "
        f"{span(act['var_mu'])} with mean σ² ≤ {act['mean_sigma2'].max():.2g}"
        if len(act)
        else f"{where} all {len(ina)} variables are inactive"
    )


# --- Fig. 2 ---------------------------------------------------------------------------------------


def var_mu_history(
    chosen: pd.DataFrame,
    latent_history: pd.DataFrame,
    epochs: pd.DataFrame,
    trace: pd.DataFrame | None = None,
    latents: pd.DataFrame | None = None,
) -> Chart:
    """Fig. 2: Var[mu_i] per variable along training (minibatches), coloured by final activity."""
    key, title = "fig2_var_mu", "Fig. 2: Var[μ] of each latent variable along training"
    series = {}
    for row in _chosen_rows(chosen):
        s = _history_of(row["trial_id"], latent_history, epochs, trace)
        if s is not None:
            series[row["trial_id"]] = (row, *s)
    if not series:
        return skip(key, title, "No chosen trial has a per-variable history (latent_history or trace table).")
    fig, axes = new_figure(len(series), (6.0, 3.8), ncols=2)
    parts, sources = [], set()
    for ax, (tid, (row, h, source, xlabel)) in zip(axes, series.items()):
        final = _final_active(tid, h, latents)
        for latent, g in h.groupby("latent"):  # inactive ones on top: they hug the x axis
            active = final.get(latent, True)
            ax.plot(
                g["x"],
                g["var_mu"],
                lw=1.1,
                alpha=0.85,
                zorder=2 if active else 3,
                color=ACTIVE_COLOR if active else INACTIVE_COLOR,
            )
        ax.set(title=f"{describe_trial(row)}{settled.flag(row)}", xlabel=xlabel, ylabel="Var[μ]")
        ax.title.set_fontsize(9)
        handles = [
            Line2D([], [], color=ACTIVE_COLOR, label="active at the end"),
            Line2D([], [], color=INACTIVE_COLOR, label="inactive at the end"),
        ]
        step = row.get("settled_step")
        if xlabel.startswith("minibatches") and not settled.flag(row) and pd.notna(step):
            ax.axvline(step, color="0.3", ls="--", lw=1)  # from here on the active set held still
            handles.append(Line2D([], [], color="0.3", ls="--", label=f"settled (minibatch {step:.0f})"))
        ax.legend(handles=handles, fontsize=8, title=source, title_fontsize=7)
        parts.append(_fig2_reading(h, final, row) + _settled_reading(row))
        sources.add(source)
    fig.suptitle(title)
    return Chart(key, title, "; ".join(parts) + f" (from the {' and the '.join(sorted(sources))}).", fig)


def _history_of(trial_id, latent_history, epochs, trace):
    """(rows with x, latent, var_mu; source; x label) from the trace, else the per-epoch evaluations."""
    if trace is not None and len(trace) and (trace["trial_id"] == trial_id).any():
        h = trace[trace["trial_id"] == trial_id][["step", "latent", "var_mu"]].rename(columns={"step": "x"})
        return h, "minibatch trace", "minibatches"
    if not len(latent_history) or not (latent_history["trial_id"] == trial_id).any():
        return None
    h = latent_history[latent_history["trial_id"] == trial_id][["epoch", "latent", "var_mu"]]
    if len(epochs) and "step" in epochs:
        steps = epochs[epochs["trial_id"] == trial_id][["epoch", "step"]]
        h = h.merge(steps, on="epoch", how="left").rename(columns={"step": "x"})
        return h, "per-epoch evaluation", "minibatches (at each evaluated epoch)"
    return h.rename(columns={"epoch": "x"}), "per-epoch evaluation", "epoch"


def _settled_reading(row) -> str:
    if settled.flag(row):
        return " (not settled: the active set was still changing at the end)"
    step = row.get("settled_step")
    return f" (settled at minibatch {step:.0f})" if settled.COLUMN in row and pd.notna(step) else ""


def _final_active(trial_id, h: pd.DataFrame, latents) -> dict:
    if latents is not None and len(latents) and (latents["trial_id"] == trial_id).any():
        t = latents[latents["trial_id"] == trial_id]
        return dict(zip(t["latent"], t["active"].astype(bool)))
    last = h[h["x"] == h["x"].max()]
    return dict(zip(last["latent"], last["var_mu"] > 0.01))


def _fig2_reading(h: pd.DataFrame, final: dict, row) -> str:
    where = f"{row['arch']} d={fmt(row['latent_dim'])} λ={fmt(row['lam'])}"
    dead = [v for v, a in final.items() if not a]
    alive = h[h["latent"].isin([v for v, a in final.items() if a])]
    top = alive[alive["x"] == alive["x"].max()]["var_mu"] if len(alive) else pd.Series(dtype=float)
    n_alive = len(final) - len(dead)
    grow = f"the {n_alive} active ones end at Var[μ] {span(top)}" if len(top) else ""
    if not dead:
        return f"{where}: no variable collapses; {grow}"
    lows = h[h["latent"].isin(dead)]
    above = lows[lows["var_mu"] > 0.01]
    by = f"after minibatch {int(above['x'].max())}" if len(above) else "from the start"
    return f"{where}: the {len(dead)} variables that end inactive stay below Var[μ] = 0.01 {by}" + (
        f", while {grow}" if grow else ""
    )


# --- Sec. 5 ---------------------------------------------------------------------------------------


def gain_vs_kl(latents: pd.DataFrame, trials: pd.DataFrame) -> Chart:
    """Sec. 5: reconstruction gain against KL, one point per variable of every trial, panel per arch."""
    key, title = "gain_vs_kl", "Sec. 5: reconstruction gain against KL per variable"
    if not len(latents) or "recon_gain" not in latents or latents["recon_gain"].isna().all():
        return skip(
            key,
            title,
            "No trial has per-variable reconstruction gains (they are computed at the end "
            "of training and every gain_every epochs).",
        )
    d = frame(trials).trials
    d = d.assign(_unsettled=settled.unsettled(d))
    df = latents.dropna(subset=["recon_gain", "kl"])
    df = df.merge(d[["trial_id", "panel", "_unsettled"]], on="trial_id")
    if not len(df):
        return skip(key, title, "No finished trial has per-variable reconstruction gains.")
    df = df.assign(state=np.where(df["active"], "active", "inactive"))
    colors = {"active": ACTIVE_COLOR, "inactive": INACTIVE_COLOR}
    panels = list(dict.fromkeys(df["panel"]))
    fig, axes = new_figure(len(panels), (5.2, 4.4), ncols=3)
    hi = float(max(df["kl"].max(), df["recon_gain"].max(), 1.0)) * 1.3
    for ax, panel in zip(axes, panels):
        sub = df[df["panel"] == panel]
        if (~sub["_unsettled"]).any():
            sns.scatterplot(
                sub[~sub["_unsettled"]],
                x="kl",
                y="recon_gain",
                hue="state",
                hue_order=["active", "inactive"],
                palette=colors,
                s=22,
                alpha=0.6,
                edgecolor="none",
                ax=ax,
            )
        moving = sub[sub["_unsettled"]]
        if len(moving):  # variables of trials whose collapse had not settled: hollow
            ax.scatter(
                moving["kl"],
                moving["recon_gain"],
                s=26,
                facecolors="none",
                linewidths=0.9,
                edgecolors=[colors[s] for s in moving["state"]],
                label="trial not settled (hollow)",
            )
        line = np.geomspace(1e-3, hi, 50)
        ax.plot(line, line, ls=":", color="0.3", label="gain = KL")
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_yscale("symlog", linthresh=0.01)
        ax.set(
            title=f"arch = {panel}",
            xlabel="KL divergence of the variable (nats)",
            ylabel="reconstruction gain (error with z_i = 0 − error)",
        )
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    note = settled.not_settled(
        df.loc[df["_unsettled"], "trial_id"].nunique(), df["trial_id"].nunique(), "their variables hollow"
    )
    return Chart(key, title, settled.with_note(_gain_reading(df), note), fig)


def _gain_reading(df: pd.DataFrame) -> str:
    act, ina = df[df["active"]], df[~df["active"]]
    parts = []
    if len(act):
        above = float((act["recon_gain"] > act["kl"]).mean())
        parts.append(
            f"{above:.0%} of the {len(act)} active variables gain more reconstruction than their KL cost "
            f"(above the dotted line)"
        )
    if len(ina):
        parts.append(
            f"the {len(ina)} inactive ones sit at the origin (median KL {ina['kl'].median():.2g} nats, "
            f"median gain {ina['recon_gain'].median():.2g})"
        )
    return "; ".join(parts) + "."


def table1_section(study: Study) -> Chart:
    return table1(study.tables.latents, study.chosen)


def history_section(study: Study) -> Chart:
    t = study.tables
    return var_mu_history(study.chosen, t.latent_history, t.epochs, t.trace, t.latents)


def gain_section(study: Study) -> Chart:
    return gain_vs_kl(study.tables.latents, study.tables.trials)
