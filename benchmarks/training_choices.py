"""Issue 23: the collapse count under each training choice, side by side with the paper (no training).

    python benchmarks/training_choices.py runs/training_choices runs/training_choices_numerics \
        runs/training_choices_conv [runs/training_choices_long] --out benchmarks/results/training_choices

Reads the studies' tables (studies/training_choices*.yaml: full MNIST, latent 16, lambda 1, stopped once settled)
and writes ``--out``.md / .csv: one row per architecture and training choices (``vaesweep.config.trial.recipe``)
with its seeds, the active count per seed, mean ± sd and min..max, the ELBO, the law residual, how many trials
settled (analysis/settled.py: only settled trials count) and the minibatches they trained; then the three verdicts
of the issue per setting:

- dense keeps 8 ± 1 (Table 1): the settled seeds' mean n_active within 7..9;
- conv keeps more than dense (Sec. 3.1): every settled conv seed of the recipe above the highest settled dense
  seed of the same init and numerics (init, adam_eps, bce_clip, a preset's resolved), trained as long;
- the fine values (Table 1, at 50 epochs): every inactive Var[mu] < 5e-4 and every law within 0.05 of 1.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from analysis import settled
from analysis.design import with_defaults
from analysis.report import to_markdown
from vaesweep.config.trial import CONV_ONLY_CHOICES, TRAINING_CHOICES, recipe
from vaesweep.study.tables import load_study

PAPER = {"dense": 8, "conv": 13}
DENSE_CHOICES = [f for f in TRAINING_CHOICES if f != "preset" and f not in CONV_ONLY_CHOICES]  # act on both nets
LONG = 50  # epochs: the fine-values runs
FINE_VAR_MU, FINE_LAW = 5e-4, 0.05


def trials_of(folders: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every finished trial of the folders, with its study, recipe and the minibatches it trained, and their
    per-variable rows."""
    rows, lats = [], []
    for folder in folders:
        t = load_study(folder)
        df = with_defaults(t.trials)
        df = df[df["status"] == "done"].copy()
        df["study"] = folder.name
        df["recipe"] = [recipe(r) for r in df.to_dict("records")]
        df["dense_key"] = [tuple(r[f] for f in DENSE_CHOICES) for r in df.to_dict("records")]  # preset resolved
        df["minibatches"] = df["trial_id"].map(t.epochs.groupby("trial_id")["step"].max())
        df["epochs_trained"] = df["trial_id"].map(t.epochs.groupby("trial_id")["epoch"].max())
        rows.append(df)
        lats.append(t.latents[t.latents["trial_id"].isin(df["trial_id"])])
    return pd.concat(rows, ignore_index=True), pd.concat(lats, ignore_index=True)


def fine_values(trial_ids: pd.Series, latents: pd.DataFrame) -> tuple[float, float]:
    lat = latents[latents["trial_id"].isin(trial_ids)]
    inactive = lat[~lat["active"].astype(bool)]
    return float(inactive["var_mu"].max()) if len(inactive) else np.nan, float((lat["law"] - 1).abs().max())


def summarise(trials: pd.DataFrame, latents: pd.DataFrame) -> pd.DataFrame:
    out = []
    for (arch, epochs_budget, rec), g in trials.groupby(["arch", "epochs", "recipe"], sort=False):
        used, _ = settled.split(g)
        counts = used.sort_values("seed")["n_active"].astype(int)
        var_mu_max, law_max = fine_values(used["trial_id"], latents)
        out.append(
            {
                "arch": arch,
                "training choices": rec,
                "dense_key": g["dense_key"].iloc[0],
                "budget epochs": int(epochs_budget),
                "seeds": ", ".join(str(int(s)) for s in sorted(g["seed"])),
                "settled trials": f"{len(used)}/{len(g)}",
                "n_active per seed": " / ".join(str(c) for c in counts),
                "mean": counts.mean() if len(counts) else np.nan,
                "sd": counts.std(ddof=1) if len(counts) > 1 else np.nan,
                "min": counts.min() if len(counts) else np.nan,
                "max": counts.max() if len(counts) else np.nan,
                "elbo": used["elbo"].mean(),
                "law_residual_max": used["law_residual_max"].mean(),
                "kl_working": f"{int(used['kl_working'].astype(bool).sum())}/{len(used)}",
                "minibatches": f"{int(g['minibatches'].min()):,}..{int(g['minibatches'].max()):,}",
                "inactive var_mu max": var_mu_max,
                "max abs(law - 1)": law_max,
                "studies": ", ".join(sorted(set(g["study"]))),
            }
        )
    table = pd.DataFrame(out)
    table["dense 8 ± 1"] = [
        ("yes" if 7 <= m <= 9 else "no") if a == "dense" else "" for a, m in zip(table["arch"], table["mean"])
    ]
    table["conv keeps more"] = [_conv_more(r, table) for r in table.to_dict("records")]
    table["fine values (50 ep.)"] = [
        ("yes" if v < FINE_VAR_MU and law <= FINE_LAW else "no") if b >= LONG else ""
        for v, law, b in zip(table["inactive var_mu max"], table["max abs(law - 1)"], table["budget epochs"])
    ]
    return table


def _conv_more(row: dict, table: pd.DataFrame) -> str:
    if row["arch"] != "conv":
        return ""
    """Above every dense seed of the same init and numerics, trained as long (settled stop, or 50 epochs)?"""
    dense = table[(table["arch"] == "dense") & (table["dense_key"] == row["dense_key"])]
    dense = dense[(dense["budget epochs"] >= LONG) == (row["budget epochs"] >= LONG)]
    if not len(dense) or np.isnan(row["min"]):
        return "no dense trials of its init and numerics"
    top = dense["max"].max()
    verdict = "yes" if row["min"] > top else "no"
    return f"{verdict} ({int(row['min'])}..{int(row['max'])} vs dense {int(dense['min'].min())}..{int(top)})"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/training_choices"))
    args = p.parse_args()
    trials, latents = trials_of(args.folders)
    table = summarise(trials, latents).drop(columns="dense_key")
    per_trial = trials[
        ["study", "arch", "recipe", "seed", "n_active", "elbo", "law_residual_max", "kl_working", "settled"]
        + ["stopped_reason", "minibatches", "epochs_trained"]
    ]
    table.to_csv(args.out.with_suffix(".csv"), index=False)
    per_trial.to_csv(args.out.parent / f"{args.out.name}_trials.csv", index=False)
    text = to_markdown(table.round({"mean": 2, "sd": 2, "elbo": 1, "law_residual_max": 3}))
    args.out.with_suffix(".md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
