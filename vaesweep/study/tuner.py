"""A study's Ray Tune Tuner: its trainable, param_space, searcher, scheduler and callbacks, or the one restored from
``<study>/tune``; and, for ``search: optuna``, ``lambda_star.parquet`` written as each setting's search finishes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from ray import tune
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from vaesweep.config.folder import LAMBDA_STAR, OPTUNA_DB, RAY_FOLDER, SEARCH_FOLDER
from vaesweep.config.packing import pack_size
from vaesweep.config.spec import Grid, StudySpec
from vaesweep.experiments import resolve
from vaesweep.study.progress import Progress
from vaesweep.study.recorder import Recorder
from vaesweep.study.recovery import CheckpointRepair, relocate_search_state
from vaesweep.study.relocation import study_folder
from vaesweep.study.searcher import lambda_star, settings_search
from vaesweep.study.space import pack_param_space, param_space
from vaesweep.study.stopping import SettledStopper
from vaesweep.study.tables import load_trials
from vaesweep.study.tracking import tracking_callbacks
from vaesweep.study.trainables import CHECKPOINT_EVERY_KEY


def build_tuner(spec: StudySpec, out: Path, quiet: bool = False, folder: str | None = None):
    """A new Tuner for the study, or the restored one when ``out`` already holds its experiment.

    With ``search: optuna`` it is one Tuner for every fixed setting (grid values and seed): its
    searcher adds each trial's setting and asks that setting's own Optuna study for the rest.
    ``folder``: the experiment's own folder under ``out/tune`` (a phase of experiment: method), the
    results still recorded in ``out``'s tables.
    """
    optuna_search = spec.search.type == "optuna"
    packed = not optuna_search and pack_size(spec) > 1  # K configurations per Ray trial
    function = resolve(spec.kind.packed_trainable if packed else spec.kind.trainable)
    runnable = tune.with_resources(function, {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu})
    space = pack_param_space(spec) if packed else param_space(spec)
    if spec.checkpoint_every > 1:  # absent at 1: a study from before the setting keeps its param_space
        space[CHECKPOINT_EVERY_KEY] = spec.checkpoint_every
    experiment = out / RAY_FOLDER if folder is None else out / RAY_FOLDER / folder
    search_alg, num_samples, callbacks = None, spec.search.num_samples, []
    max_concurrent = spec.max_concurrent
    if optuna_search:
        settings = spec.settings()
        for key in settings[0]:  # the grid fields and the seed: each trial's come from its setting
            space.pop(key, None)
        experiment = experiment / SEARCH_FOLDER
        search_alg = settings_search(spec.search, settings, out / OPTUNA_DB, spec.name)
        num_samples *= len(settings)
        callbacks = [LambdaStarWriter(spec, out)]
        # Ray keeps one trial pending at a time for a custom searcher unless max_concurrent_trials (its
        # ConcurrencyLimiter) says how many may run (ray.tune.execution.tune_controller._get_max_pending_trials):
        # without it each setting's trial would wait for the last one's worker to start.
        side_by_side = len(settings) * (spec.search.max_concurrent_per_setting or spec.search.num_samples)
        max_concurrent = min(max_concurrent or side_by_side, side_by_side)
    if tune.Tuner.can_restore(str(experiment)):
        relocate_search_state(experiment)  # a moved or copied study: its new trials where it is now
        return tune.Tuner.restore(
            str(experiment),
            runnable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
            param_space=space,
        )
    fields = [k for k, d in spec.space.items() if not (isinstance(d, Grid) and len(d.grid) == 1)]
    fields += ["seed"] if len(spec.seed_list()) > 1 else []  # what tells the trials apart in the progress lines
    progress = None if quiet else Progress(spec.name, spec.n_grid_points(), fields)
    scheduler = None
    if spec.scheduler is not None:
        s = spec.scheduler
        scheduler = ASHAScheduler(
            time_attr="epoch",
            metric=s.metric,
            mode=s.mode,
            max_t=int(spec.trial_base().get("epochs", 50)),
            grace_period=s.grace_period,
            reduction_factor=s.reduction_factor,
        )
    return tune.Tuner(
        runnable,
        param_space=space,
        tune_config=tune.TuneConfig(
            num_samples=num_samples,
            scheduler=scheduler,
            search_alg=search_alg,
            max_concurrent_trials=max_concurrent,
            reuse_actors=True,  # a worker runs trial after trial: imports and data set loaded once per worker
        ),
        run_config=tune.RunConfig(
            name=experiment.name,
            storage_path=str(experiment.parent),
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=spec.retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            stop=SettledStopper(),  # ends a trial on its final report (settled or budget); kept by Tuner.restore
            callbacks=[
                CheckpointRepair(),  # a killed driver's snapshot may name a checkpoint already replaced
                Recorder(out, progress=progress),
                JsonLoggerCallback(),
                *tracking_callbacks(spec, out),
                *callbacks,
            ],
        ),
    )


def run_search(spec: StudySpec, out: Path, quiet: bool = False) -> pd.DataFrame:
    """Run (or resume) a ``search: optuna`` study's searches, every setting at once; returns lambda_star.

    For a caller that holds ``out``'s driver lock with Ray started and ``spec.resources`` resolved
    (as ``run_study`` does). Each setting keeps its Optuna study ``<spec.name>:<setting key>`` in
    ``out/optuna.db``; a killed driver resumes from ``out/tune/search`` without re-running finished trials.
    """
    build_tuner(spec, out, quiet).fit()
    return write_lambda_star(spec, out)


def write_lambda_star(spec: StudySpec, out: Path, finished_only: bool = False) -> pd.DataFrame:
    """``lambda_star.parquet``: the minimal working lambda of every setting (whose search has finished:
    all its ``num_samples`` trials done or failed, when ``finished_only``)."""
    trials = load_trials(out)
    cols = [c for c in dict.fromkeys(("dataset", *spec.settings()[0])) if c in trials]
    if finished_only:
        ended = trials["status"].isin(["done", "failed"])
        trials = trials[
            ended.groupby([trials[c] for c in cols], dropna=False).transform("sum") >= spec.search.num_samples
        ]
        if not len(trials):
            return lambda_star(trials, cols)
    star = lambda_star(trials, cols)
    star.to_parquet(out / LAMBDA_STAR, index=False)
    return star


class LambdaStarWriter(tune.Callback):
    """Rewrites ``lambda_star.parquet`` whenever a trial ends, with every setting whose search has finished
    (after the Recorder, listed before it, has written that trial's row)."""

    def __init__(self, spec: StudySpec, out: Path):
        self.spec, self.out = spec, out

    def __setstate__(self, state):  # unpickled by Tuner.restore: the study folder the driver runs now
        self.__dict__.update({**state, "out": study_folder(state["out"])})

    def on_trial_complete(self, iteration, trials, trial, **info):
        write_lambda_star(self.spec, self.out, finished_only=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        write_lambda_star(self.spec, self.out, finished_only=True)
