"""The Optuna searcher: the minimal lambda whose KL term still works (Sec. 6.1).

Sec. 6.1 suggests choosing "a minimal lambda large enough to ensure the regularization effect
of the KL component", checked through the laws of Sec. 4. As a constrained optimisation:
    minimise  lam
    subject to  law_excess = law_residual_max - law_tol <= 0     (Sec. 4 variance law)
                mu_excess  = mean_mu_abs_max  - mu_tol  <= 0     (Sec. 4 first moment)

Every trial reports both constraint values; Ray Tune's ``OptunaSearch`` drives the trials and
hands them to Optuna with ``Trial.set_constraint`` (Optuna 5's constrained optimisation, read by
its GP and TPE samplers). The default GP sampler (one random start after the given start points)
needs few trials for this one-dimensional, monotone problem. The Optuna study lives in SQLite next to the results
(``runs/<name>/optuna.db``), one Optuna study per fixed setting (architecture, latent dimension,
dataset...), so a search resumes where it stopped and opens in optuna-dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from ray.tune.search.optuna import OptunaSearch

from vaesweep.config.search import Objective, Sampler

CONSTRAINTS = ("law_excess", "mu_excess")  # reported by every trial; <= 0 means satisfied
DB_FILE = "optuna.db"


def make_sampler(s: Sampler):
    """An Optuna sampler; constraints reach it through ``Trial.set_constraint``."""
    if s.type == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, seed=s.seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=s.n_startup_trials, seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


def make_search(
    objectives: list[Objective],
    sampler: Sampler,
    constrained: bool,
    db: Path,
    study_name: str,
    start_points: list[dict] | None = None,
):
    """Ray Tune's OptunaSearch over an SQLite-backed Optuna study, storing constraint values."""

    class ConstrainedOptunaSearch(OptunaSearch):
        """OptunaSearch that hands each trial's reported constraint values to Optuna."""

        def on_trial_result(self, trial_id: str, result: dict):
            if all(m in result for m in metrics):  # a diverged trial's last report has no metrics
                super().on_trial_result(trial_id, result)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
            ot_trial = self._ot_trials.get(trial_id)
            if ot_trial is not None and constrained:
                for name in CONSTRAINTS:  # a trial without its values counts as infeasible
                    ot_trial.set_constraint(name, float(result[name]) if result and name in result else 1.0)
            if result and "diverged" in result:
                result, error = None, True
            super().on_trial_complete(trial_id, result, error)

    metrics = [o.metric for o in objectives]
    modes = [o.mode for o in objectives]
    storage = optuna.storages.RDBStorage(f"sqlite:///{db}")
    return ConstrainedOptunaSearch(
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        sampler=make_sampler(sampler),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=start_points or None,
    )


def setting_key(setting: dict[str, Any]) -> str:
    """A readable, file-name-safe name of a fixed setting, e.g. 'arch=dense,latent_dim=16,seed=0'."""
    return ",".join(f"{k}={v}" for k, v in sorted(setting.items())).replace("/", "_").replace(" ", "")


def lambda_star(trials: pd.DataFrame, setting_cols: list[str]) -> pd.DataFrame:
    """Per fixed setting: the minimal lambda whose KL term works, with the evidence around it.

    Columns: the setting, ``lam_star`` (smallest lam of a finished trial with kl_working), its
    residuals, ``lam_below`` (the largest lam below lam_star that failed the laws) with its
    residual, how many trials the search used, and ``n_unsettled``: how many of them were left out
    because their collapse had not settled (vaesweep/engine/settle.py; a number read from a trial still
    changing is not the paper's phenomenon, so it can be neither lam_star nor lam_below). A study
    from before the ``settled`` column counts every trial and has n_unsettled NaN (unknown).
    """
    rows = []
    done = trials[trials["status"] == "done"]
    groups = done.groupby(setting_cols, dropna=False) if setting_cols else [((), done)]
    for key, group in groups:
        key = key if isinstance(key, tuple) else (key,)
        settled = group["settled"].eq(True) if "settled" in group else pd.Series(True, index=group.index)
        counted = group[settled]
        ok = counted[counted["kl_working"].astype(bool)].sort_values("lam")
        row = dict(
            zip(setting_cols, key),
            n_trials=len(group),
            n_unsettled=int((~settled).sum()) if "settled" in group else float("nan"),
            lam_star=float("nan"),
            lam_star_trial=None,
            lam_star_law_residual=float("nan"),
            lam_below=float("nan"),
            lam_below_law_residual=float("nan"),
        )
        if len(ok):
            best = ok.iloc[0]
            row.update(
                lam_star=best["lam"], lam_star_trial=best["trial_id"], lam_star_law_residual=best["law_residual_max"]
            )
            failed = ~counted["kl_working"].astype(bool)
            below = counted[(counted["lam"] < best["lam"]) & failed].sort_values("lam")
            if len(below):
                row.update(lam_below=below.iloc[-1]["lam"], lam_below_law_residual=below.iloc[-1]["law_residual_max"])
        rows.append(row)
    return pd.DataFrame(rows)
