"""The report's "Method" section: Sec. 7's methodology as run by ``experiment: method`` (vaesweep/study/method.py).

Reads ``method.parquet`` (one row per setting: lambda* and its bracket, the onset of sparsity, the FID-proxy of
reconstructions, prior samples and the two-stage generator, the advice) and ``method_trials.parquet`` (the evidence
trials with their phase) with pandas only. Per setting the figure draws phase 1 (law residual against lambda, the
trials that passed the Sec. 4 laws filled, unsettled ones hollow, lambda* dashed) and phase 2 (active variables
against the latent dimension, beside the diagonal they follow until sparsity sets in); its reading is the advice.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from vaesweep.config.folder import METHOD, METHOD_TRIALS, counts

from .chart import ACTIVE_COLOR, INACTIVE_COLOR, Chart, Study, new_figure, skip

KEY, TITLE = "method", "Method (Sec. 7): lambda*, the onset of sparsity, and the advice"


def load_method(study_dir: str | Path) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """The method table and its evidence trials, or None when the study is not an experiment: method."""
    study_dir = Path(study_dir)
    if not (study_dir / METHOD).exists():
        return None
    evidence = study_dir / METHOD_TRIALS
    return pd.read_parquet(study_dir / METHOD), pd.read_parquet(evidence) if evidence.exists() else pd.DataFrame()


def method_chart(table: pd.DataFrame, evidence: pd.DataFrame) -> Chart:
    """Phases 1 and 2 per setting, the method table, and the advice as the reading."""
    if not len(table):
        return skip(KEY, TITLE, "The method has no setting with a result yet.")
    settings = [s for s in table["setting"] if len(evidence) and s in set(evidence["setting"])]
    reading = " ".join(a if a.endswith(".") else a + "." for a in table["advice"])
    if not settings:
        return Chart(KEY, TITLE, reading, None, {"method": table})
    fig, axes = new_figure(2 * len(settings), (5.0, 3.8), ncols=2)
    for n, setting in enumerate(settings):
        mine, row = evidence[evidence["setting"] == setting], table[table["setting"] == setting].iloc[0]
        _search_panel(axes[2 * n], mine[mine["phase"] == 1], setting, row)
        _capacity_panel(axes[2 * n + 1], mine[mine["phase"] < 3], setting, row)
    fig.suptitle(TITLE)
    return Chart(KEY, TITLE, reading, fig, {"method": table, "method_trials": evidence})


def _scatter(ax, trials: pd.DataFrame, x: str, y: str, color: str, label: str, unsettled_label: str) -> None:
    """``trials`` as points: filled where they count (settled), hollow where not."""
    settled = counts(trials)
    ax.scatter(trials.loc[settled, x], trials.loc[settled, y], color=color, label=label)
    if (~settled).any():
        out = trials[~settled]
        ax.scatter(out[x], out[y], facecolors="none", edgecolors=color, label=unsettled_label)


def _search_panel(ax, trials: pd.DataFrame, setting: str, row: pd.Series) -> None:
    """Phase 1: law_residual_max against lambda; filled where the laws held, hollow where not settled."""
    ok = trials["kl_working"].eq(True)
    for works, color, name in ((True, ACTIVE_COLOR, "laws hold"), (False, INACTIVE_COLOR, "laws fail")):
        _scatter(ax, trials[ok == works], "lam", "law_residual_max", color, name, f"{name}, not settled")
    if pd.notna(row["lam_star"]):
        ax.axvline(row["lam_star"], color="k", ls="--", lw=1, label=f"λ* = {row['lam_star']:.3g}")
    ax.set_xscale("log")
    ax.set(title=f"{setting}: phase 1, the λ search", xlabel="λ", ylabel="law residual max")
    ax.legend(fontsize=7)


def _capacity_panel(ax, trials: pd.DataFrame, setting: str, row: pd.Series) -> None:
    """Phase 2: active variables against the latent dimension at lambda*, beside the diagonal n_active = d."""
    if pd.notna(row["lam_star"]):
        trials = trials[(trials["lam"] - row["lam_star"]).abs() <= 1e-9 * row["lam_star"]]
    trials = trials.sort_values("latent_dim")
    dims = sorted({1, *trials["latent_dim"].astype(int)})
    ax.plot(dims, dims, color="#aaa", lw=1, label="n_active = latent dim")
    ax.plot(trials["latent_dim"], trials["n_active"], color=ACTIVE_COLOR, lw=1)
    _scatter(ax, trials, "latent_dim", "n_active", ACTIVE_COLOR, "trial at λ*", "not settled")
    if pd.notna(row["latent_onset"]):
        ax.axvline(
            row["latent_onset"],
            color=INACTIVE_COLOR,
            ls="--",
            lw=1,
            label=f"sparsity from {row['latent_onset']} ({row['n_active_onset']} active)",
        )
    ax.set_xscale("log", base=2)
    ax.set(title=f"{setting}: phase 2, the latent dimension grown", xlabel="latent dimension", ylabel="n_active")
    ax.legend(fontsize=7)


def section(study: Study) -> Chart | None:
    """The method's answer, once its driver has written method.parquet."""
    method = load_method(study.folder)
    return None if method is None else method_chart(*method)
