"""Is the KL term working? The variance-law residual over lambda x latent dimension (Sec. 4).

Sec. 4: when the KL term works, Q(z) has the moments of N(0, I), so for every variable
var_mu + mean_sigma2 ~ 1. The heatmap shows the trial's worst residual max_i |var_mu_i +
mean_sigma2_i - 1| (mean over seeds) per lambda and latent dimension; outlined cells are those
where the KL term works (kl_working: residual and |E[mu_i]| within tolerance) for most seeds.
The minimal working lambda found by an Optuna search (``lambda_star.parquet``: the fixed
setting columns, e.g. arch, latent_dim, dataset, seed, and ``lam_star``) is drawn over it when
given, per latent dimension (the geometric mean over seeds). Only trials whose collapse had
settled count (analysis/settled.py); cells with trials left out are hatched.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle
from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

from . import settled
from .chart import Chart, Study, new_figure, skip
from .design import fmt, frame

KEY, TITLE = "law_heatmap", "Variance-law residual over λ × latent dimension"
VALUE = "law_residual_max"
STAR_STYLE = {
    "color": "white",
    "lw": 2.5,
    "marker": "D",
    "markersize": 7,
    "markeredgecolor": "black",
    "label": "λ* (Optuna minimal working λ)",
}


CELL = ["facet", "lam_level", "latent_dim"]
MOST = 0.5  # a cell's KL term works when it works for more than this fraction of its seeds


def with_facet(df: pd.DataFrame) -> pd.DataFrame:
    """``frame(trials).trials`` with ``facet``: the panel, and the setting when the study varied one."""
    return df.assign(facet=[p if not s else f"{p} · {s}" for p, s in zip(df["panel"], df["setting"])])


def law_cells(df: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Per facet, lambda level and latent dimension (CELL): the mean variance-law residual and the fraction of
    seeds whose KL term works (``working``; the cell works above MOST), over the settled trials only (a
    residual still moving says nothing yet: Sec. 3, Fig. 2); the number of trials left out per cell; and
    those trials. ``df``: ``with_facet(frame(trials).trials)``."""
    counted, left = settled.split(df)
    cells = (
        counted.groupby(CELL, observed=True).agg(residual=(VALUE, "mean"), working=("kl_working", "mean")).reset_index()
    )
    n_left = left.groupby(CELL, observed=True).size().rename("left_out").reset_index()
    return cells, n_left, left


def law_heatmap(trials: pd.DataFrame, lambda_star: pd.DataFrame | None = None) -> Chart:
    """Heatmap of the variance-law residual per (lambda, latent_dim), a panel per arch and setting."""
    d = frame(trials)
    df = d.trials
    if not len(df) or VALUE not in df or df[VALUE].isna().all():
        return skip(KEY, TITLE, "No finished trial has a variance-law residual yet.")
    if df["lam_level"].nunique() * df["latent_dim"].nunique() < 2:
        return skip(
            KEY,
            TITLE,
            "The study fixed both λ and the latent dimension, so there is no map to draw; "
            "the residual of each trial is in the trials table.",
        )
    df = with_facet(df)
    facets = list(dict.fromkeys(df["facet"]))
    cells, n_left, left = law_cells(df)
    if not len(cells):
        return skip(KEY, TITLE, settled.none_settled(len(left), "variance-law residual"))
    cell = CELL
    positive = cells["residual"][cells["residual"] > 0]
    norm = LogNorm(vmin=max(positive.min(), 1e-3), vmax=max(positive.max(), 1.0)) if len(positive) else None
    dims = sorted(df["latent_dim"].unique())
    levels = [lv for lv in df["lam_level"].cat.categories if lv in set(df["lam_level"])]
    centers = df.groupby("lam_level", observed=True)["lam_center"].first()
    fig, axes = new_figure(len(facets), (1.1 * len(dims) + 2.6, 0.55 * len(levels) + 2.2), ncols=2)
    drew_star = False
    for ax, facet in zip(axes, facets):
        sub = cells[cells["facet"] == facet]
        grid = sub.pivot(index="lam_level", columns="latent_dim", values="residual").reindex(
            index=levels[::-1], columns=dims
        )  # largest lambda on top
        sns.heatmap(
            grid,
            ax=ax,
            annot=True,
            fmt=".2g",
            cmap="rocket_r",
            norm=norm,
            linewidths=0.5,
            linecolor="white",
            cbar_kws={"label": "max |var_mu + mean σ² − 1|"},
            annot_kws={"size": 8},
        )
        _label_colorbar(ax.collections[0].colorbar)
        works = sub.pivot(index="lam_level", columns="latent_dim", values="working").reindex(
            index=levels[::-1], columns=dims
        )
        for i, j in zip(*np.nonzero(works.fillna(0).to_numpy() > MOST)):
            ax.add_patch(Rectangle((j, i), 1, 1, fill=False, edgecolor="#00a0b0", linewidth=2.5))
        out = n_left[n_left["facet"] == facet].pivot(index="lam_level", columns="latent_dim", values="left_out")
        out = out.reindex(index=levels[::-1], columns=dims).fillna(0).to_numpy()
        for i, j in zip(*np.nonzero(out > 0)):
            ax.add_patch(Rectangle((j, i), 1, 1, **settled.HATCH))
        if lambda_star is not None and len(lambda_star):
            facet_row = df[df["facet"] == facet].iloc[0]
            drew_star |= _draw_lambda_star(ax, lambda_star, facet_row, dims, levels, centers)
        ax.set(title=f"arch = {facet}", xlabel="latent dimension", ylabel="λ")
        ax.tick_params(axis="y", rotation=0)
    handles = [
        Rectangle((0, 0), 1, 1, fill=False, edgecolor="#00a0b0", linewidth=2.5, label="KL term works (most seeds)")
    ]
    if len(left):
        handles.append(Rectangle((0, 0), 1, 1, **settled.HATCH, label="trials left out: not settled"))
    if drew_star:
        handles.append(Line2D([], [], **STAR_STYLE))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8)
    fig.suptitle(TITLE)
    table = cells.merge(n_left, on=cell, how="outer").fillna({"left_out": 0})
    table = table.assign(lam=table["lam_level"].astype(str)).rename(columns={"facet": "panel"})
    table = table[["panel", "lam", "latent_dim", "residual", "working", "left_out"]].rename(
        columns={
            "residual": VALUE + " (mean)",
            "working": "kl_working (fraction of seeds)",
            "left_out": "n_left_out (not settled)",
        }
    )
    if not settled.known(df):  # a study from before the settled column: nothing known to leave out
        table = table.drop(columns="n_left_out (not settled)")
    note = (
        ""
        if lambda_star is not None and len(lambda_star)
        else (" (no lambda_star.parquet in the study: no Optuna λ* to draw)")
    )
    if len(left):
        note += f" ({settled.left_out(len(left), len(df))}; hatched cells)"
    if lambda_star is not None and lambda_star.get("n_unsettled", pd.Series(dtype=float)).fillna(0).sum() > 0:
        note += (
            f" (λ* from settled trials only: {int(lambda_star['n_unsettled'].sum())} unsettled search trials left out)"
        )
    reading = _reading(cells, dims, float(df["law_tol"].max())).removesuffix(".") + note + "."
    return Chart(KEY, TITLE, reading, fig, {"law_residual": table})


def _label_colorbar(cbar) -> None:
    """Plain numbers at 1, 2, 5 x 10^k on the log colour scale (not 10^0 notation)."""
    cbar.locator = LogLocator(subs=(1.0, 2.0, 5.0))
    cbar.formatter = FuncFormatter(lambda v, _: f"{v:g}")
    cbar.ax.yaxis.set_minor_formatter(NullFormatter())
    cbar.update_ticks()


def _draw_lambda_star(ax, lambda_star, facet_row, dims, levels, centers) -> bool:
    """λ* per latent dimension, placed on the heatmap's rows by interpolating in log λ."""
    keys = [c for c in lambda_star.columns if c not in ("lam_star", "latent_dim", "seed") and c in facet_row]
    mask = lambda_star["lam_star"].notna().to_numpy(copy=True)  # NaN: the search found no working lambda
    for c in keys:
        mask &= lambda_star[c].astype(str).to_numpy() == str(facet_row[c])
    stars = lambda_star[mask]
    if "latent_dim" in stars:  # one point per latent dimension: the geometric mean over seeds
        stars = (
            stars[stars["latent_dim"].isin(dims)]
            .groupby("latent_dim")["lam_star"]
            .apply(lambda v: float(np.exp(np.log(v).mean())))
            .reset_index()
        )
        xs = [dims.index(v) + 0.5 for v in stars["latent_dim"]]
    else:  # one λ* for every latent dimension: a line across the panel
        stars = stars.head(1)
        xs = [0.5 * len(dims)]
    if not len(stars):
        return False
    ys = _row_position(stars["lam_star"].to_numpy(dtype=float), [centers[lv] for lv in levels])
    if "latent_dim" not in stars:
        ax.axhline(ys[0], color="white", lw=2.5)
    ax.plot(xs, ys, **STAR_STYLE)
    return True


def _row_position(lam: np.ndarray, level_values: list[float]) -> np.ndarray:
    """Heatmap y of lambda values: level k (ascending) is the row n-1-k from the top, centred at
    n-1-k+0.5; between rows linear in log(lambda), beyond the ends one row per end step, clipped
    to the map's edge."""
    n = len(level_values)
    if n == 1:
        return np.full(len(lam), 0.5)
    x = np.log(np.maximum(level_values, 1e-12))
    xp = np.concatenate([[2 * x[0] - x[1]], x, [2 * x[-1] - x[-2]]])
    fp = n - 1 - np.arange(-1, n + 1) + 0.5
    return np.clip(np.interp(np.log(np.maximum(lam, 1e-12)), xp, fp), 0, n)


def _reading(cells: pd.DataFrame, dims: list, tol: float) -> str:
    works = cells[cells["working"] > MOST]
    head = f"The KL term works (outlined) in {len(works)} of {len(cells)} cells"
    if not len(works):
        return (
            f"{head}: no cell passes the Sec. 4 check (smallest mean residual {cells['residual'].min():.2g}, "
            f"tolerance law_tol = {tol:g}), so no tested λ makes Q(z) match N(0, I) yet; train longer or "
            "try larger λ."
        )
    per_d = []
    for dim in dims:
        ok = works[works["latent_dim"] == dim]
        smallest = ok.sort_values("lam_level")["lam_level"].iloc[0] if len(ok) else "none"
        per_d.append(f"d={fmt(dim)}: {smallest}")
    return f"{head}; smallest working λ per latent dimension — {', '.join(per_d)}."


def section(study: Study) -> Chart:
    return law_heatmap(study.tables.trials, study.lambda_star)
