"""Issue 28: does the active count find a data set's known dimension? (no training: reads finished studies)

    python benchmarks/known_dimension.py runs/known_dimension_cpu runs/known_dimension_cpu_low \
        runs/known_dimension_conv_cpu --out benchmarks/results/known_dimension

Reads the studies' tables (studies/known_dimension*.yaml: sprites<k>, k known factors, stopped once settled) and
writes ``--out``.csv, ``--out``_factors.csv and ``--out``_tables.md:

- per architecture, latent dimension, lambda and k (analysis/known_dimension.py ``summary_table``): how many
  seeds settled (only settled trials count: analysis/settled.py), n_active over them (mean, min, max) and its
  verdict against k, how many factors the active code holds (R^2 >= 0.5), the Sec. 4 verdict, the minibatches to
  settle; here also ``weak``: active variables with Var[mu] < 0.1 (just above the 0.01 threshold), mean over
  seeds, and the active count without them;
- per settled trial (``factor_table``): R^2 of each factor on the active code, the variable with the largest
  |Spearman rho| for it and that |rho|.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis import settled
from analysis.known_dimension import GROUP, factor_table, known_trials, summary_table
from analysis.report import to_markdown
from vaesweep.study.tables import load_study

WEAK_VAR_MU = 0.1  # an active variable (Var[mu] > 0.01) this close to the threshold holds little


def studies(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The finished trials on sprites of every folder (with ``k`` etc.), and their per-variable rows."""
    trials, latents = [], []
    for folder in folders:
        t = load_study(folder)
        df = known_trials(t.trials).assign(study=folder.name)
        trials.append(df)
        latents.append(t.latents[t.latents["trial_id"].isin(df["trial_id"])])
    return pd.concat(trials, ignore_index=True), pd.concat(latents, ignore_index=True)


def with_weak(table: pd.DataFrame, trials: pd.DataFrame, latents: pd.DataFrame) -> pd.DataFrame:
    """``summary_table`` plus the mean count of weakly active variables and n_active without them."""
    active = latents[latents["active"].eq(True)]
    weak = active[active["var_mu"] < WEAK_VAR_MU].groupby("trial_id").size()
    ok, _ = settled.split(trials)
    ok = ok.assign(weak=ok["trial_id"].map(weak).fillna(0))
    ok["strong"] = ok["n_active"] - ok["weak"]
    per = ok.groupby([*GROUP, "k"], observed=True)[["weak", "strong"]].mean().reset_index()
    per["lam"] = per.pop("lam_level").astype(str).str.removeprefix("λ=")
    keys = ["arch", "latent_dim", "lam", "k"]
    return table.merge(per[[*keys, "weak", "strong"]], on=keys, how="left").rename(
        columns={"weak": "weak_mean", "strong": "n_active_without_weak_mean"}
    )


def answer_grid(table: pd.DataFrame) -> pd.DataFrame:
    """One row per architecture, latent dimension and k, one column per lambda: 'n_active mean [min..max], holds
    h, laws s/n' over the settled seeds."""

    def cell(r) -> str:
        if r["n_active vs k"] == "no settled trial":
            return f"not settled (0/{r['settled_seeds'].split('/')[1]})"
        span = f"{int(r['n_active_min'])}..{int(r['n_active_max'])}"
        done, of = r["settled_seeds"].split("/")
        return f"{r['n_active_mean']:.3g} [{span}], holds {r['factors_held_mean']:.2g}, laws {r['kl_working']}" + (
            "" if done == of else f", settled {done}/{of}"
        )

    grid = table.assign(cell=[cell(r) for _, r in table.iterrows()], lam=table["lam"].map(lambda v: f"λ={v}"))
    out = grid.pivot_table(index=["arch", "latent_dim", "k"], columns="lam", values="cell", aggfunc="first")
    out = out[sorted(out.columns, key=lambda c: float(c.removeprefix("λ=")))]
    return out.reset_index().fillna("—")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("studies", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/known_dimension"))
    args = p.parse_args()
    trials, latents = studies(args.studies)
    table = with_weak(summary_table(trials), trials, latents)
    factors = factor_table(trials, latents)
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    factors.to_csv(args.out.parent / f"{args.out.name}_factors.csv", index=False)
    md = args.out.parent / f"{args.out.name}_tables.md"
    md.write_text(
        f"# Active variables against the known dimension: tables\n\nFrom {', '.join(f.name for f in args.studies)}"
        f" ({len(trials)} finished trials, {int((~settled.unsettled(trials)).sum())} settled).\n\n"
        f"## n_active at settle against k\n\n{to_markdown(answer_grid(table))}\n"
        f"## Per setting and k\n\n{to_markdown(table)}\n## Per settled trial\n\n{to_markdown(factors)}"
    )
    print(to_markdown(answer_grid(table)))


if __name__ == "__main__":
    main()
