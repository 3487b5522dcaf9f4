"""Replay the settled stop rule on full-budget studies: where it would have stopped each trial, and whether
the answer there is the budget's (issue 15, point 2; no training).

    python benchmarks/stop_replay.py runs/savings_budget runs/method_conv --min-steps 2000 1500

A trial stopped at epoch e has the budget run's state at epoch e (same seed, same minibatches; checked by
benchmarks/settled_savings.py, ``identical_at_stop``), so a budget run's recorded evaluations tell exactly
where a settled run would have stopped and what it would have answered. For every finished trial of each
folder, the engine's own ``SettleTracker`` (vaesweep/engine/settle.py) is fed its evaluations in order
(step, active set from latent_history, law_residual_max, kl_working), with the trial's settle settings,
and two rules are compared with the budget's last epoch:

- ``settled``: the first evaluation whose collapse has settled (the rule before the steady verdict);
- ``steady``: settled and its Sec. 4 verdict the same over the settle window (what
  ``stop: {when: settled}`` does now, vaesweep/engine/trial.py).

Writes ``--out``.md: per folder the share of trial-epochs, n_active and kl_working agreement per rule, whether
the onset of sparsity per lambda and seed (analysis/capacity.py, settled trials, as the report reads it) and
lambda* per latent dimension and seed (vaesweep.study.searcher.lambda_star) are the budget's, and the
per-trial table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from analysis import settled
from analysis.capacity import onset_of_sparsity
from analysis.report import to_markdown
from vaesweep.config.trial import TrialConfig, trial_fields
from vaesweep.engine.settle import SettleTracker
from vaesweep.study.searcher import lambda_star
from vaesweep.study.tables import load_study

RULES = ("settled", "steady")
ANSWERS = ("n_active", "n_inactive", "law_residual_max", "kl_working", "settled")  # read at the stop epoch


def replay_trial(epochs: pd.DataFrame, active: dict[int, list[int]], cfg: TrialConfig, min_steps: int) -> dict:
    """The epoch each rule stops at (the budget's last if never), from the trial's evaluated epochs in order."""
    tracker = SettleTracker.for_config(cfg)
    stop = dict.fromkeys(RULES)
    for row in epochs[epochs["evaluated"].astype(bool)].itertuples():
        tracker.observe(row.step, active.get(row.epoch, []), row.law_residual_max, row.kl_working)
        if row.step < min_steps:
            continue
        if stop["settled"] is None and tracker.settled:
            stop["settled"] = row.epoch
        if stop["steady"] is None and tracker.verdict_steady:
            stop["steady"] = row.epoch
    last = int(epochs["epoch"].max())
    return {rule: last if epoch is None else int(epoch) for rule, epoch in stop.items()}


def replay(folder: Path, min_steps: int) -> pd.DataFrame:
    tables = load_study(folder)
    trials = tables.trials.set_index("trial_id")
    history = tables.latent_history
    rows = []
    for tid, epochs in tables.epochs.sort_values(["trial_id", "epoch"]).groupby("trial_id"):
        t = trials.loc[tid]
        if t["status"] != "done" or epochs["epoch"].max() < t["epochs"]:
            continue  # only trials that trained their whole budget
        cfg = TrialConfig(**{k: v for k, v in t.items() if k in trial_fields() and pd.notna(v)})
        mine = history[(history["trial_id"] == tid) & history["active"].astype(bool)]
        active = {int(e): sorted(g["latent"].astype(int)) for e, g in mine.groupby("epoch")}
        stops = replay_trial(epochs, active, cfg, min_steps)
        at = epochs.set_index("epoch")
        last = at.iloc[-1]
        row = {
            "study": folder.name,
            "trial_id": tid,
            "arch": t["arch"],
            "dataset": t["dataset"],
            "latent_dim": int(t["latent_dim"]),
            "lam": round(float(t["lam"]), 3),
            "seed": int(t["seed"]),
            "epochs": int(last.name),
        }
        for rule, epoch in {"budget": int(last.name), **stops}.items():
            row[f"epoch_{rule}"] = epoch
            for key in ANSWERS:
                row[f"{key}_{rule}"] = at.loc[epoch, key].item()
        rows.append(row)
    return pd.DataFrame(rows)


def answers(g: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The trials as a trials table holding what ``rule`` would have answered (its stop epoch's values)."""
    cols = {f"{key}_{rule}": key for key in ANSWERS}
    return g[["trial_id", "latent_dim", "lam", "seed", *cols]].rename(columns=cols).assign(status="done")


def onset(g: pd.DataFrame, rule: str) -> pd.DataFrame:
    """The onset of sparsity per lambda and seed, from the settled trials (the report's rule)."""
    counted, _ = settled.split(answers(g, rule))
    return onset_of_sparsity(counted, ["lam", "seed"]).reset_index(drop=True)


def star(g: pd.DataFrame, rule: str) -> pd.DataFrame:
    """lambda* per latent dimension and seed (vaesweep.study.searcher.lambda_star, settled trials only)."""
    return lambda_star(answers(g, rule), ["latent_dim", "seed"])[["latent_dim", "seed", "lam_star"]]


def agreement(budget: pd.DataFrame, other: pd.DataFrame, keys: list[str], value: str) -> str:
    """'k/N': in how many of the groups (either table's) ``value`` is the same (both NaN counts as the same)."""
    both = budget[[*keys, value]].merge(other[[*keys, value]], on=keys, how="outer", suffixes=("_b", "_o"))
    same = (both[f"{value}_b"] == both[f"{value}_o"]) | (both[f"{value}_b"].isna() & both[f"{value}_o"].isna())
    return f"{int(same.sum())}/{len(both)}"


def summary(per_trial: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for study, g in per_trial.groupby("study", sort=False):
        row = {"study": study, "trials": len(g), "budget_epochs": int(g["epochs"].sum())}
        for rule in RULES:
            row[f"share_{rule}"] = round(g[f"epoch_{rule}"].sum() / g["epochs"].sum(), 3)
            diff = (g[f"n_active_{rule}"] - g["n_active_budget"]).abs()
            row[f"n_active_within_1_{rule}"] = f"{int((diff <= 1).sum())}/{len(g)}"
            agree = int((g[f"kl_working_{rule}"] == g["kl_working_budget"]).sum())
            row[f"kl_working_agrees_{rule}"] = f"{agree}/{len(g)}"
            row[f"onset_agrees_{rule}"] = agreement(onset(g, "budget"), onset(g, rule), ["lam", "seed"], "onset")
            row[f"lambda_star_agrees_{rule}"] = agreement(
                star(g, "budget"), star(g, rule), ["latent_dim", "seed"], "lam_star"
            )
        rows.append(row)
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", help="study folders whose trials trained their whole budget")
    p.add_argument("--min-steps", type=int, nargs="+", default=[2000], help="stop: min_steps, per folder or one")
    p.add_argument("--out", default="benchmarks/results/stop_replay")
    args = p.parse_args(argv)
    steps = args.min_steps * len(args.folders) if len(args.min_steps) == 1 else args.min_steps
    per_trial = pd.concat([replay(Path(f), m) for f, m in zip(args.folders, steps)], ignore_index=True)
    lines = [
        "# The settled stop rule replayed on full-budget studies",
        "",
        f"`python benchmarks/stop_replay.py {' '.join(args.folders)} --min-steps {' '.join(map(str, steps))}`",
        "",
        "Per study folder (each trial trained its whole budget; metrics on the eval split): the share of the "
        "budget's trial-epochs each rule would have used, and its answers against the budget's last epoch. "
        "`settled`: the first settled evaluation; `steady`: settled with the same Sec. 4 verdict over the "
        "settle window (the rule `stop: {when: settled}` applies now).",
        "",
        "## Summary",
        "",
        to_markdown(summary(per_trial)),
        "",
        "## Per trial",
        "",
        to_markdown(per_trial),
        "",
    ]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines[:12]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
