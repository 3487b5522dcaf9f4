"""Does the collapse find a data set's dimension? Active variables against a known number of factors.

The paper's Sec. 6 cites Dai & Wipf [7]: a VAE of enough capacity uses as many latent variables as the
manifold dimension of its data. On ``sprites<k>`` (vaesweep/engine/sprites.py) that dimension is k by
construction, so the active count of a settled trial has a right answer:

- ``known_dimension_chart``: n_active at settle against k, one line per lambda (mean, band min-max over
  seeds), a panel per architecture and latent dimension, the line n_active = k drawn; its table gives per
  setting and k the count over seeds, how many settled, the Sec. 4 verdict and how many of the k factors the
  active code holds (``factor_r2_<factor>`` >= HELD_R2: engine/factors.py);
- ``factor_chart``: which variable holds which factor: |Spearman rho| of each active variable's mean with
  each factor (``factor_rho_<factor>``) for one settled trial per setting and k, as small heat maps and a
  table of every settled trial.

Only settled trials count (analysis/settled.py); unsettled ones are drawn hollow and left out of the table's
numbers.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns

from vaesweep.config.metrics import FACTOR_R2 as R2
from vaesweep.config.metrics import FACTOR_RHO as RHO
from vaesweep.config.trial import SPRITES

from . import settled
from .chart import Chart, Study, lines_by_lambda, new_figure, skip
from .design import fmt, frame

KEY, TITLE = "known_dimension", "Active variables against the known dimension"
FACTORS_KEY, FACTORS_TITLE = "factors", "Which variable holds which factor"
HELD_R2 = 0.5  # a factor is held when the active variables' means explain at least half its variance
GROUP = ["arch", "latent_dim", "setting", "lam_level"]


def known_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The done trials on data with a known dimension, with ``k``, ``lam_level``, ``setting`` and
    ``factors_held`` (how many factors have R^2 >= HELD_R2 on the active code)."""
    d = frame(trials)
    df = d.trials[d.trials["dataset"].isin(SPRITES)].copy() if "dataset" in d.trials else d.trials.iloc[:0]
    df["k"] = df["dataset"].map(SPRITES)
    r2 = [c for c in df.columns if c.startswith(R2)]
    df["factors_held"] = (df[r2] >= HELD_R2).sum(axis=1) if r2 else np.nan
    return df.reset_index(drop=True)


def _panel(r) -> str:
    return f"{r['arch']} · latent {fmt(r['latent_dim'])}" + (f" · {r['setting']}" if r["setting"] else "")


def summary_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per setting and k: settled seeds, n_active over them (mean, min, max), its verdict against k,
    how many factors the active code holds, the Sec. 4 verdict and the minibatches to settle."""
    rows = []
    for key, g in df.groupby([*GROUP, "k"], observed=True, sort=True):
        ok, _ = settled.split(g)
        n = ok["n_active"]
        verdict = (
            "no settled trial"
            if not len(ok)
            else "= k"
            if (n == key[-1]).all()
            else "over"
            if (n > key[-1]).all()
            else "under"
            if (n < key[-1]).all()
            else "mixed"
        )
        rows.append(
            {
                **dict(zip(GROUP, key[:-1])),
                "k": key[-1],
                "settled_seeds": f"{len(ok)}/{len(g)}",
                "n_active_mean": n.mean(),
                "n_active_min": n.min(),
                "n_active_max": n.max(),
                "n_active vs k": verdict,
                "factors_held_mean": ok["factors_held"].mean(),
                "kl_working": f"{int(ok['kl_working'].fillna(False).astype(bool).sum())}/{len(ok)}",
                "settled_step_median": ok["settled_step"].median() if "settled_step" in ok else np.nan,
            }
        )
    out = pd.DataFrame(rows)
    if len(out):
        out["lam"] = out.pop("lam_level").astype(str).str.removeprefix("λ=")
        out = out[["arch", "latent_dim", "setting", "lam", *out.columns[3:-1]]]
        if not out["setting"].astype(bool).any():
            out = out.drop(columns="setting")
    return out


def known_dimension_chart(trials: pd.DataFrame) -> Chart:
    """n_active at settle against the known dimension k (sprites<k>), the line n_active = k drawn."""
    df = known_trials(trials)
    if not len(df):
        return skip(KEY, TITLE, "No finished trial on data with a known dimension (dataset: sprites1 ... sprites5).")
    ok, left = settled.split(df)
    df["panel"] = [_panel(r) for _, r in df.iterrows()]
    panels = list(dict.fromkeys(df.sort_values(["arch", "latent_dim"])["panel"]))
    levels = list(df["lam_level"].cat.categories)
    palette = dict(zip(levels, sns.color_palette("flare", len(levels))))
    ks = sorted(df["k"].unique())
    fig, axes = new_figure(len(panels), (5.0, 4.2), ncols=3, sharey=True)
    for ax, panel in zip(axes, panels):
        mine = df["panel"] == panel
        ax.plot(ks, ks, color="0.6", lw=4, alpha=0.35, zorder=0, label="n_active = k")
        sub = df[mine & ~settled.unsettled(df)]
        if len(sub):
            lines_by_lambda(ax, sub, "k", levels, palette, marker="o")
            held = sub.groupby(["lam_level", "k"], observed=True)["factors_held"].mean().reset_index()
            for i, (level, g) in enumerate(held.groupby("lam_level", observed=True)):
                label = f"factors held (R² ≥ {HELD_R2:g}), mean" if i == 0 else None
                ax.plot(g["k"], g["factors_held"], ls=":", marker="x", color=palette[level], label=label)
        out = df[mine & settled.unsettled(df)]
        if len(out):
            ax.scatter(out["k"], out["n_active"], **settled.MARK, label=settled.LABEL)
        ax.set_xticks(ks)
        ax.set(title=panel, xlabel="known dimension k (factors)", ylabel="active variables at settle", ylim=(0, None))
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(TITLE)
    table = summary_table(df)
    note = settled.not_settled(len(left), len(df), "hollow circles, left out of the table's numbers")
    return Chart(KEY, TITLE, settled.with_note(_reading(table), note), fig, {"known_dimension": table})


def _reading(table: pd.DataFrame) -> str:
    counted = table[table["n_active vs k"] != "no settled trial"]
    if not len(counted):
        return f"No setting has a settled trial, so no active count is read; {settled.FIX}."

    def names(v: str) -> str:
        rows = counted[counted["n_active vs k"] == v]
        by = rows.groupby(["arch", "latent_dim", "lam"], sort=False)["k"].apply(lambda s: ",".join(map(str, s)))
        return "; ".join(f"{a} latent {fmt(d)} λ={lam}: k={ks}" for (a, d, lam), ks in by.items()) or "none"

    held = counted.groupby("k")["factors_held_mean"].max()
    best = ", ".join(f"{held[k]:.2g} of {k}" for k in held.index)
    return (
        f"n_active equals k on every settled seed for {names('= k')}; it overshoots for {names('over')}, "
        f"undershoots for {names('under')}, and differs between seeds for {names('mixed')}; the factors the active "
        f"code holds (R² ≥ {HELD_R2:g}, mean over seeds, best setting per k): {best}."
    )


def factor_table(df: pd.DataFrame, latents: pd.DataFrame) -> pd.DataFrame:
    """One row per settled trial: its setting, k, n_active, and per factor the R^2 of the active code and the
    active variable with the largest |rho| (and that |rho|)."""
    r2 = [c for c in df.columns if c.startswith(R2)]
    rho = [c for c in latents.columns if c.startswith(RHO)]
    ok, _ = settled.split(df)
    active = latents[latents["active"].eq(True) & latents["trial_id"].isin(ok["trial_id"])]
    rows = []
    for _, t in ok.sort_values(["arch", "latent_dim", "lam", "k", "seed"]).iterrows():
        mine = active[active["trial_id"] == t["trial_id"]]
        row = {"trial_id": t["trial_id"], "arch": t["arch"], "latent_dim": t["latent_dim"], "lam": t["lam"]}
        row |= {"k": t["k"], "seed": t["seed"], "n_active": t["n_active"], "factors_held": t["factors_held"]}
        for c in rho:
            name = c.removeprefix(RHO)
            if f"{R2}{name}" not in r2 or pd.isna(t.get(f"{R2}{name}")):
                continue
            best = mine[c].abs().idxmax() if len(mine) and mine[c].notna().any() else None
            row[f"r2_{name}"] = t[f"{R2}{name}"]
            row[f"best_var_{name}"] = int(mine.at[best, "latent"]) if best is not None else None
            row[f"best_rho_{name}"] = abs(mine.at[best, c]) if best is not None else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def factor_chart(trials: pd.DataFrame, latents: pd.DataFrame) -> Chart:
    """Small heat maps of |rho| (active variables x factors), one settled trial (the lowest seed) per setting."""
    df = known_trials(trials)
    rho = [c for c in latents.columns if c.startswith(RHO)]
    if not len(df) or not rho:
        return skip(
            FACTORS_KEY, FACTORS_TITLE, "No finished trial on data with known factors (dataset: sprites1 ... sprites5)."
        )
    ok, _ = settled.split(df)
    if not len(ok):
        return skip(FACTORS_KEY, FACTORS_TITLE, settled.none_settled(len(df), "factor correspondence"))
    shown = ok.sort_values("seed").groupby([*GROUP, "k"], observed=True, sort=True).head(1)
    rows = list(dict.fromkeys(_panel(r) + f" · λ={fmt(r['lam'])}" for _, r in shown.sort_values(GROUP).iterrows()))
    ks = sorted(shown["k"].unique())
    fig, axes = new_figure(len(rows) * len(ks), (2.3, 2.0), ncols=len(ks))  # a row per setting, a column per k
    for ax in axes:
        ax.set_visible(False)
    for _, t in shown.iterrows():
        ax = axes[rows.index(_panel(t) + f" · λ={fmt(t['lam'])}") * len(ks) + ks.index(t["k"])]
        ax.set_visible(True)
        names = [c.removeprefix(RHO) for c in rho if pd.notna(t.get(R2 + c.removeprefix(RHO)))]
        mine = latents[(latents["trial_id"] == t["trial_id"]) & latents["active"].eq(True)].sort_values("latent")
        grid = mine[[RHO + n for n in names]].abs().to_numpy() if len(mine) else np.zeros((0, len(names)))
        ax.imshow(grid if len(grid) else np.zeros((1, len(names))), vmin=0, vmax=1, cmap="Blues", aspect="auto")
        ax.set_xticks(range(len(names)), names, rotation=60, fontsize=7)
        ax.set_yticks(range(len(mine)), [f"z{int(v)}" for v in mine["latent"]], fontsize=7)
        ax.set_title(f"{t['arch']} {fmt(t['latent_dim'])} λ={fmt(t['lam'])} k={t['k']} seed {t['seed']}", fontsize=7)
    fig.suptitle(f"{FACTORS_TITLE}\n|Spearman ρ| of each active variable's mean with each factor (white 0, blue 1)")
    table = factor_table(df, latents)
    one = (table["n_active"] == table["k"]) & (table["factors_held"] == table["k"])
    reading = (
        f"In {int(one.sum())} of {len(table)} settled trials the active variables are as many as the factors and "
        f"hold all of them (R² ≥ {HELD_R2:g}); the heat maps show one seed per setting: one dark cell per row and "
        "column means each variable holds one factor alone."
    )
    return Chart(FACTORS_KEY, FACTORS_TITLE, reading, fig, {"factors": table})


def section(study: Study) -> Chart | None:
    """Only for a study with trials on data of a known dimension (sprites<k>)."""
    trials = study.tables.trials
    return known_dimension_chart(trials) if len(known_trials(trials)) else None


def factors_section(study: Study) -> Chart | None:
    trials = study.tables.trials
    return factor_chart(trials, study.tables.latents) if len(known_trials(trials)) else None
