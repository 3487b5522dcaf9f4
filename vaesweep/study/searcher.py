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

All settings at once (issue 16): ``SettingsSearch`` multiplexes the settings' searches into ONE Ray
Tune searcher, so one Tuner fills the cluster with trials of different settings side by side while
each setting keeps its own Optuna study, its own trial budget (``num_samples``) and, with
``search.max_concurrent_per_setting: 1``, its sequential order (each GP suggestion sees every trial
before it). One Tuner rather than concurrent Tuners in threads (not built): the study's Recorder keeps
every table in memory and rewrites the Parquet files whole, so two Tuners' Recorders would overwrite each
other's rows; Ray Tune catches Ctrl+C only in the main thread's ``fit``; and one experiment folder restores
every setting at once with Ray's own ``Tuner.restore`` (this searcher's state travels with it). Measured
against the settings one after another: benchmarks/results/concurrent_search.md.
"""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from vaesweep.config.folder import counts, settled_known
from vaesweep.config.search import Objective, Sampler
from vaesweep.config.spec import Search
from vaesweep.study.ray_compat import mark_completed, optuna_study, optuna_trials, start_points, start_points_held
from vaesweep.study.relocation import study_folder

CONSTRAINTS = ("law_excess", "mu_excess")  # reported by every trial; <= 0 means satisfied


def make_sampler(s: Sampler):
    """An Optuna sampler; constraints reach it through ``Trial.set_constraint``."""
    if s.type == "tpe":
        return optuna.samplers.TPESampler(n_startup_trials=s.n_startup_trials, seed=s.seed)
    if s.type == "gp":
        return optuna.samplers.GPSampler(n_startup_trials=s.n_startup_trials, seed=s.seed)
    return optuna.samplers.RandomSampler(seed=s.seed)


class ConstrainedOptunaSearch(OptunaSearch):
    """OptunaSearch that hands each trial's reported constraint values to Optuna."""

    def __init__(self, constrained: bool, **kwargs):
        super().__init__(**kwargs)
        self.constrained = constrained

    def on_trial_result(self, trial_id: str, result: dict):
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        # a diverged trial's last report has no metrics
        if all(m in result for m in metrics) and not self._told(trial_id):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        if self._told(trial_id):
            mark_completed(self, trial_id)
            return
        ot_trial = optuna_trials(self).get(trial_id)
        if ot_trial is not None and self.constrained:
            for name in CONSTRAINTS:  # a trial without its values counts as infeasible
                ot_trial.set_constraint(name, float(result[name]) if result and name in result else 1.0)
        if result and "diverged" in result:
            result, error = None, True
        super().on_trial_complete(trial_id, result, error)

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        # Ray's OptunaSearch enqueues its start points in the Optuna study each time this is called, and a
        # restored study calls it again: a start point some trial already holds is not enqueued twice, so a
        # resumed search does not run it again.
        with start_points_held(self):
            ready = super().set_search_properties(metric, mode, config, **spec)
        if ready:
            self._enqueue_start_points(lost=set())
        return ready

    def forget_lost_trials(self) -> list[int]:
        """After Tune restored this searcher from its last snapshot: the Optuna trials asked since (by a driver
        killed before its next snapshot) have no Ray trial any more. Each is told failed, so the search does
        not wait on it, and a start point it held is enqueued again; Tune asks for their places anew (the
        budget restored with the snapshot). Returns their numbers."""
        asked = {t.number for t in optuna_trials(self).values()}
        study = optuna_study(self)
        lost = [
            t.number for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)) if t.number not in asked
        ]
        for number in lost:
            study.tell(number, state=TrialState.FAIL)
        self._enqueue_start_points(lost=set(lost))
        return lost

    def _enqueue_start_points(self, lost: set[int]) -> None:
        """Enqueue each start point no trial holds (waiting, running or finished), the ``lost`` ones aside."""
        study = optuna_study(self)
        held = [
            t.system_attrs.get("fixed_params", t.params)
            for t in study.get_trials(deepcopy=False)
            if t.number not in lost
        ]
        for point in start_points(self):
            if not any(_same_values(point, values) for values in held):
                study.enqueue_trial(point)

    def _told(self, trial_id: str) -> bool:
        """Whether Optuna holds this trial's outcome already: after a killed driver, a trial that finished after
        Tune's last snapshot is restored and reports its last epoch again, which Optuna must not take twice."""
        ot_trial = optuna_trials(self).get(trial_id)
        return ot_trial is not None and ot_trial.number in {
            t.number for t in optuna_study(self).get_trials(deepcopy=False) if t.state.is_finished()
        }


def _same_values(point: dict, values: dict) -> bool:
    """Whether a trial's parameter values are the start point's (floats compared as Optuna does)."""
    if point.keys() != values.keys():
        return False
    return all(
        math.isclose(float(v), float(values[k]), rel_tol=1e-9) if isinstance(v, int | float) else v == values[k]
        for k, v in point.items()
    )


def make_search(
    objectives: list[Objective],
    sampler: Sampler,
    constrained: bool,
    db: Path,
    study_name: str,
    start_points: list[dict] | None = None,
) -> ConstrainedOptunaSearch:
    """Ray Tune's OptunaSearch over an SQLite-backed Optuna study, storing constraint values."""
    metrics = [o.metric for o in objectives]
    modes = [o.mode for o in objectives]
    storage = StudyDB(f"sqlite:///{db}")
    return ConstrainedOptunaSearch(
        constrained,
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        sampler=make_sampler(sampler),
        study_name=study_name,
        storage=storage,
        points_to_evaluate=start_points or None,
    )


class StudyDB(optuna.storages.RDBStorage):
    """The study's Optuna database, ``<study>/optuna.db``. Pickled with the searcher (Ray's tuner.pkl and
    searcher state), it opens the database of the folder the driver runs now when unpickled, never the
    path it was started from (a moved or copied study, vaesweep/study/relocation.py)."""

    def __setstate__(self, state):
        saved = Path(state["url"].removeprefix("sqlite:///"))
        super().__setstate__({**state, "url": f"sqlite:///{study_folder(saved.parent) / saved.name}"})


class SettingsSearch(Searcher):
    """One Ray Tune searcher over every fixed setting, each with its own Optuna search.

    ``suggest`` gives the next trial to the setting with the fewest trials so far among those with
    budget left (``num_samples`` each) and fewer than ``per_setting`` trials running (None: no limit),
    asks that setting's searcher, and adds the setting's fixed values (grid fields, seed) to the
    suggestion; results and completions go back to the searcher that suggested the trial.
    """

    def __init__(
        self, searches: dict[str, tuple[dict, ConstrainedOptunaSearch]], num_samples: int, per_setting: int | None
    ):
        first = next(iter(searches.values()))[1]
        super().__init__(metric=first.metric, mode=first.mode)
        self.settings = {key: setting for key, (setting, _) in searches.items()}
        self.searches = {key: search for key, (_, search) in searches.items()}
        self.num_samples, self.per_setting = num_samples, per_setting
        self.started = dict.fromkeys(self.searches, 0)  # trials given to each setting
        self.owner: dict[str, str] = {}  # Ray trial id -> setting key
        self.running: set[str] = set()  # Ray trial ids not yet complete

    def set_search_properties(self, metric, mode, config: dict, **spec) -> bool:
        for search in self.searches.values():  # each keeps its own metric and mode
            search.set_search_properties(None, None, config)
        return True

    def suggest(self, trial_id: str) -> dict | None:
        open_keys = [k for k in self.searches if self.started[k] < self.num_samples]
        if not open_keys:
            return Searcher.FINISHED
        busy = [self.owner[t] for t in self.running]
        ready = [k for k in open_keys if self.per_setting is None or busy.count(k) < self.per_setting]
        if not ready:
            return None  # every setting with budget left is at its concurrency: Tune asks again later
        key = min(ready, key=lambda k: self.started[k])  # the first such setting on a tie
        config = self.searches[key].suggest(trial_id)
        self.started[key] += 1
        self.owner[trial_id] = key
        self.running.add(trial_id)
        return {**config, **self.settings[key]}

    def on_trial_result(self, trial_id: str, result: dict):
        self.searches[self.owner[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False):
        self.searches[self.owner[trial_id]].on_trial_complete(trial_id, result, error)
        self.running.discard(trial_id)

    # Tune saves this with every experiment snapshot and restores it on Tuner.restore: the settings'
    # budgets, which trial belongs to which setting, and each OptunaSearch's own state (as it saves it).
    def save(self, checkpoint_path: str):
        state = {**self.__dict__, "searches": {k: s.__dict__.copy() for k, s in self.searches.items()}}
        with open(checkpoint_path, "wb") as f:
            pickle.dump(state, f)

    def restore(self, checkpoint_path: str):
        with open(checkpoint_path, "rb") as f:
            state = pickle.load(f)
        for key, search_state in state.pop("searches").items():
            self.searches[key].__dict__.update(search_state)
            self.searches[key].forget_lost_trials()
        self.__dict__.update(state)


def settings_search(search: Search, settings: list[dict[str, Any]], db: Path, study: str) -> SettingsSearch:
    """The searcher of a ``search: optuna`` study: Optuna study '<study>:<setting key>' per setting in ``db``."""
    return SettingsSearch(
        {
            setting_key(s): (
                s,
                make_search(
                    search.objectives(),
                    search.sampler,
                    search.constrained,
                    db,
                    f"{study}:{setting_key(s)}",
                    search.start,
                ),
            )
            for s in settings
        },
        search.num_samples,
        search.max_concurrent_per_setting,
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
        settled = counts(group)
        counted = group[settled]
        ok = counted[counted["kl_working"].astype(bool)].sort_values("lam")
        row = dict(
            zip(setting_cols, key),
            n_trials=len(group),
            n_unsettled=int((~settled).sum()) if settled_known(group) else float("nan"),
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
