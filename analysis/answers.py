"""The study's answers as text: what ``run`` prints at its end and ``status`` at any time.

Per architecture (panel) and lambda: the active variables at each latent dimension and the onset of
sparsity (analysis/capacity.py's ``onset_of_sparsity``), in which cells the KL term works (the Sec. 4
variance law: analysis/law.py's ``law_cells``, the heatmap's outlined cells), lambda* where a search ran
(``lambda_star.parquet``, vaesweep/study/searcher.py), how many trials settled and which did not
(analysis/settled.py). The same rules as the HTML report, read from the same tables; unsettled trials are
left out of the first two as the report leaves them out.

``answers(trials, lambda_star)`` returns sections: (heading, body), the body a table or lines of text; the
command line lays them out for a terminal or a file (vaesweep/cli/answers.py).
"""

from __future__ import annotations

import pandas as pd

from . import settled
from .capacity import onset_of_sparsity
from .design import fmt, frame, span
from .law import MOST, VALUE, law_cells, with_facet

Section = tuple[str, "pd.DataFrame | list[str]"]
BY = ["panel", "lam_level", "setting"]


def answers(trials: pd.DataFrame, lambda_star: pd.DataFrame | None = None) -> list[Section]:
    """The sections that apply to this study (none before a trial has finished)."""
    d = frame(trials)
    out: list[Section] = []
    counted, left = settled.split(d.trials)
    if len(counted) and "n_active" in counted:
        out.append(_capacity(counted))
    if len(counted) and VALUE in counted and "kl_working" in counted:
        out.append(_kl_term(with_facet(counted)))
    if lambda_star is not None and len(lambda_star):
        out.append(("minimal lambda with a working KL term (Sec. 6.1), per setting", _lambda_star(lambda_star)))
    if len(d.trials):
        out.append(_settled(d.trials, left, d.varied))
    return out


def _row_label(r) -> str:
    return " ".join(str(p) for p in (r["panel"], r["lam_level"], r["setting"]) if p)


def _capacity(df: pd.DataFrame) -> Section:
    """Mean active variables (over seeds) per row and latent dimension, then the onset of sparsity."""
    active = df.groupby([*BY, "latent_dim"], observed=True)["n_active"].mean().unstack("latent_dim")
    onset = onset_of_sparsity(df, BY).set_index(BY)
    table = pd.DataFrame(
        {f"d={fmt(dim)}": active[dim].map(lambda v: "" if pd.isna(v) else f"{v:.3g}") for dim in active.columns}
    )
    if df["latent_dim"].nunique() > 1:
        table["onset of sparsity"] = [
            f"d={fmt(int(o['onset']))} ({o['n_active_at_onset']:.3g} active)"
            if pd.notna(o["onset"])
            else f"none up to d={fmt(o['largest_tested'])}"
            for _, o in onset.reindex(table.index).iterrows()
        ]
    table.index = [_row_label(dict(zip(BY, key))) for key in table.index]
    return ("active variables at each latent dimension d (settled trials, mean over seeds)", table)


def _kl_term(df: pd.DataFrame) -> Section:
    """Per facet and lambda: the latent dimensions where the KL term works, and where not with the residual."""
    cells, _, _ = law_cells(df)
    lines = []
    for (facet, lam), g in cells.groupby(["facet", "lam_level"], observed=True, sort=True):
        works, fails = g[g["working"] > MOST], g[g["working"] <= MOST]
        bits = []
        if len(works):
            bits.append(f"works at d={', '.join(fmt(v) for v in works['latent_dim'])}")
        if len(fails):
            residual = span(fails["residual"], ".2g")
            bits.append(f"fails at d={', '.join(fmt(v) for v in fails['latent_dim'])} (law residual {residual})")
        lines.append(f"{facet} {lam}: {'; '.join(bits)}")
    tol = df["law_tol"].max() if "law_tol" in df else None
    head = "where the KL term works (Sec. 4 variance law" + (f" within {tol:g}" if tol is not None else "")
    return (head + ", settled trials, most seeds)", lines)


def _lambda_star(star: pd.DataFrame) -> pd.DataFrame:
    keep = [c for c in star.columns if not c.endswith("_trial")]
    return star[keep].reset_index(drop=True)


def _settled(done: pd.DataFrame, left: pd.DataFrame, varied) -> Section:
    if not settled.known(done):
        return ("settled", ["unknown: this study's tables have no settled column (recorded before the check)"])
    lines = [f"{len(done) - len(left)} of {len(done)} finished trials settled"]
    fields = [f for f in varied if f not in ("threads",)]
    for _, r in left.iterrows():
        setting = " ".join(f"{f}={fmt(r[f])}" for f in fields if f in r)
        lines.append(f"not settled: {r['trial_id']} {setting} (left out above)")
    if len(left):
        lines.append(f"to settle them: {settled.FIX}")
    return ("settled (Sec. 3: the collapse stopped moving)", lines)
