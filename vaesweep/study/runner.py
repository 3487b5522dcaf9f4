"""Running a study on Ray Tune: spec -> param_space -> Tuner -> Parquet results.

``run_study(spec)`` starts a local Ray bound to 127.0.0.1 (no dashboard) unless an address is
given (or RAY_ADDRESS is set), checks the cluster can hold one trial, and runs Ray Tune's Tuner
with the Ray trainable of the study's experiment kind (vaesweep.experiments). The experiment lives in
``<storage>/<name>/tune``: running the same study again restores it with Ray's own ``Tuner.restore``
— finished trials are kept, unfinished ones resume from their last checkpoint — and trials are retried
``retries`` times (``FailureConfig``) from their last checkpoint when a worker or node dies.

With ``search: optuna`` (``run_search``) one Tuner runs every fixed setting's constrained Optuna
search at once (vaesweep.study.searcher.SettingsSearch), its experiment in ``<storage>/<name>/tune/search``,
and ``lambda_star.parquet`` is rewritten as each setting's search finishes.

Before anything starts, the folder's existing files are checked (``StudyFolderError`` for a corrupt or
foreign one) and the driver takes the folder's lock (vaesweep.study.lock: one driver per study folder).
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import platform
import shutil
import socket
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import ray
import yaml
from pydantic import ValidationError
from ray import tune
from ray._private import ray_constants
from ray._private import worker as ray_worker  # the local node's session folder (Ray 2.60)
from ray.tune.logger import JsonLoggerCallback
from ray.tune.schedulers import ASHAScheduler

from vaesweep.config.errors import StudyFolderError, StudyInterrupted
from vaesweep.config.folder import LAMBDA_STAR, OPTUNA_DB, RAY_FOLDER, SEARCH_FOLDER, SPEC_COPY, VERSIONS, has_results
from vaesweep.config.packing import PACK_KEY, grid_configs, make_packs, pack_size
from vaesweep.config.spec import Choice, Grid, LogUniform, RandInt, SpecError, StudySpec, Uniform
from vaesweep.engine.data import check_available
from vaesweep.experiments import resolve
from vaesweep.study.lock import driver_lock
from vaesweep.study.progress import Progress
from vaesweep.study.recorder import Recorder
from vaesweep.study.recovery import CheckpointRepair, relocate_search_state
from vaesweep.study.relocation import running_in, study_folder
from vaesweep.study.searcher import lambda_star, settings_search
from vaesweep.study.stopping import SettledStopper
from vaesweep.study.tables import check_study_folder, load_trials, read_spec_copy
from vaesweep.study.tracking import check_extras, tracking_callbacks
from vaesweep.study.trainables import CHECKPOINT_EVERY_KEY

# Ray's notice on every new local cluster ("Token authentication is enabled ..."), a warning by level only
TOKEN_NOTICE_LOGGER = "ray._private.authentication.authentication_token_setup"
# Ray Tune's "The `X` operation took 0.6 s, which may be a performance bottleneck" (ray.tune.utils.util.warn_if_slow,
# at 0.5 s): on a busy machine one every few seconds; the first one is shown, every one with --verbose
SLOW_LOGGERS = ("ray.tune.utils.util", "ray.tune.execution.tune_controller")


class FirstSlowWarning(logging.Filter):
    """Lets through the first of Ray Tune's slow-operation warnings and every other record."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "may be a performance bottleneck" not in record.getMessage():
            return True
        first, self.seen = not self.seen, True
        return first


def study_dir(spec: StudySpec, storage: str | None = None) -> Path:
    root = storage or spec.storage
    if "://" in root:
        raise SpecError(
            f"storage '{root}': cloud URIs are not supported; on a cluster give a shared filesystem "
            "mounted at the same path on every node (e.g. --storage /mnt/efs/runs)"
        )
    out = (Path(root) / spec.name).absolute()
    there = next(p for p in (out, *out.parents) if p.exists())
    if not there.is_dir():
        raise SpecError(f"storage '{root}': {there} is a file, not a folder; give a folder for the results (--storage)")
    return out


def param_space(spec: StudySpec) -> dict:
    """The Ray Tune param_space: the fixed base, the varied fields, and the seeds as a grid."""

    def domain(d):
        if isinstance(d, Grid):
            return tune.grid_search(d.grid)
        if isinstance(d, Choice):
            return tune.choice(d.choice)
        if isinstance(d, Uniform):
            return tune.uniform(*d.uniform)
        if isinstance(d, LogUniform):
            return tune.loguniform(*d.loguniform)
        if isinstance(d, RandInt):
            return tune.randint(d.randint[0], d.randint[1] + 1)  # inclusive bounds in the spec
        raise TypeError(d)

    space = {"threads": max(1, int(spec.resources.cpu)), **spec.trial_base()}
    space.update({k: domain(d) for k, d in spec.space.items()})
    space["seed"] = tune.grid_search(spec.seed_list())
    if spec.kind_settings is not None:  # e.g. the Sec. 5 noise experiment's, under a key trial fields ignore
        space[spec.kind.key] = spec.kind_settings.model_dump()
    return space


def ray_output(verbose: bool) -> None:
    """Ray's own banners (its token notice, the "Configuration for experiment" box, "View detailed results
    here") only when ``verbose``; its other warnings and errors always. Ray Tune's new output engine prints
    the box and the results path even at verbosity 0 (ray/tune/tune.py), its old one with verbosity 0
    nothing (RunConfig(verbose=0), build_tuner): RAY_AIR_NEW_OUTPUT chooses, read when ``fit`` starts. Of Ray
    Tune's slow-operation warnings only the first (FirstSlowWarning) unless ``verbose``."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    logging.getLogger(TOKEN_NOTICE_LOGGER).setLevel(logging.NOTSET if verbose else logging.ERROR)
    once = FirstSlowWarning()
    for name in SLOW_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, FirstSlowWarning)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(once)


def init_ray(address: str | None) -> None:
    """Join ``address`` (or $RAY_ADDRESS); else start a local Ray on 127.0.0.1, dashboard off."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Every checkpoint forces an experiment snapshot (num_to_keep=1): that is what makes a killed
    # driver resumable without re-running finished trials, so Ray's warning about it is noise.
    # Ray's JSON logger stays (added in build_tuner: Ray's ResultGrid and the tests read its result.json;
    # its CSV logger's progress.csv nothing reads, so it is left out); TensorBoard and MLflow are opt-in
    # (the spec's callbacks, vaesweep/study/tracking.py: scalars only, no per-latent lists).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a diverged trial's last report
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # address="local": always a new Ray of our own, never some other Ray found on this machine (nor
    # the one a stale /tmp/ray/ray_current_cluster names). On Linux Ray swaps a loopback node address
    # for the machine's (services.resolve_ip_for_localhost) and its servers then listen on every
    # interface; with Ray's own switch for a local-only Ray (ray_constants.ENABLE_RAY_CLUSTER, False
    # on macOS/Windows or with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0) the node stays 127.0.0.1, and the
    # GCS, raylet, workers, driver and runtime-env agent all listen on 127.0.0.1 only
    # (tests/test_network.py checks a running study). Switched only while this node starts.

    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node
    # The local Ray's session folder (/tmp/ray/session_*: its logs and sockets, ~1.5 MB a run) goes when this
    # driver exits; a trial's error and logs stay in the study folder (tune/).
    atexit.register(_remove_session, ray_worker._global_node.get_session_dir_path())


def _remove_session(session: str) -> None:
    """Stop the local Ray this driver started, then remove its session folder."""
    ray.shutdown()
    shutil.rmtree(session, ignore_errors=True)


def check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """A cluster address (host:port of its head) that nothing answers is refused within ``timeout_s``, naming it
    (``ray.init`` would retry it for minutes without a word). ``auto``, ``local`` and ``ray://`` addresses are
    Ray's to resolve."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise SpecError(
            f"--address {address}: no Ray cluster answers there ({err}); start one with `ray start --head` "
            "or give the address its head printed"
        ) from None


def check_resources(spec: StudySpec) -> None:
    """A trial that asks for more than the cluster has would wait forever: refuse it up front."""
    have = ray.cluster_resources()
    for key, need in (("GPU", spec.resources.gpu), ("CPU", spec.resources.cpu)):
        if need > have.get(key, 0):
            raise SpecError(
                f"resources.{key.lower()}: each trial asks for {need:g} {key} but the Ray cluster "
                f"has {have.get(key, 0):g}; lower resources.{key.lower()} or join a larger cluster with --address"
            )


def check_data(spec: StudySpec) -> None:
    """Every data set the study names is there (DataError with the fix if not), before Ray starts."""
    base, varied = spec.trial_base(), spec.space.get("dataset")
    names = (
        varied.grid
        if isinstance(varied, Grid)
        else varied.choice
        if isinstance(varied, Choice)
        else [base.get("dataset", "mnist5k")]
    )
    for name in names:
        check_available(name, base.get("data_root"), base.get("cache_dir"))


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in ("vaesweep", "torch", "torchvision", "ray", "optuna", "pandas", "pyarrow", "pydantic"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def _claim_dir(spec: StudySpec, out: Path) -> None:
    """Write the spec copy and versions; refuse to mix two different specs in one folder."""
    copy = out / SPEC_COPY
    text = yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False)
    ran = has_results(out)  # a spec copy with no trial recorded yet is replaced
    if copy.exists() and ran and not _same_study(read_spec_copy(out), spec):
        raise SpecError(
            f"'{out}' holds results of a different '{spec.name}' study; give the changed study a new "
            "name, or remove that folder to start over"
        )
    out.mkdir(parents=True, exist_ok=True)
    copy.write_text(text)
    (out / VERSIONS).write_text(json.dumps(_versions(), indent=2))


def _same_study(saved: dict, spec: StudySpec) -> bool:
    """Whether a saved spec copy describes ``spec`` (settings added later with their defaults ignored)."""
    try:
        old = StudySpec(**saved)
    except (ValidationError, TypeError):
        return False
    return old.model_dump(mode="json", exclude_defaults=True) == spec.model_dump(mode="json", exclude_defaults=True)


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


def run_study(
    spec: StudySpec, address: str | None = None, storage: str | None = None, quiet: bool = False, verbose: bool = False
) -> Path:
    """Run (or continue) a study; returns its results folder. ``quiet``: no progress; ``verbose``: Ray's own
    banners and trial tables too (ray_output)."""
    out = study_dir(spec, storage)
    check_extras(spec)
    check_study_folder(out, warn=False)  # a corrupt or foreign folder: refused before Ray starts
    check_address(address or os.environ.get("RAY_ADDRESS"))
    check_experiment_kept(out)
    if not (address or os.environ.get("RAY_ADDRESS")):  # a cluster's nodes may hold data this one lacks
        check_data(spec)
    with driver_lock(out), running_in(out):  # one driver per study folder; what Ray unpickles writes here
        ray_output(verbose)
        _run_locked(spec, out, address, quiet)
    if interrupted(spec, out):
        raise StudyInterrupted(f"{spec.name}: interrupted: run the same command again to resume")
    return out


def interrupted(spec: StudySpec, out: Path) -> bool:
    """Whether the study ended before all its trials did: Ray Tune stops on Ctrl+C (and SIGUSR1) by ending its
    trials and returning from ``fit``, so the tables tell: a trial neither done nor failed, or (a study of one
    Tuner) fewer trials than the spec has."""
    trials = load_trials(out) if has_results(out) else pd.DataFrame({"status": []})
    short = spec.kind.driver is None and len(trials) < spec.n_grid_points()
    return short or bool((~trials["status"].isin(["done", "failed"])).any())


def all_failed(out: Path) -> str | None:
    """The first trial's error line when every trial of the study failed (None otherwise)."""
    trials = load_trials(out)
    if not len(trials) or not (trials["status"] == "failed").all():
        return None
    first = trials.iloc[0]
    return f"every trial of the study failed; the first, {first['trial_id']}: {first['error']}"


class _NoRayResumeHint(logging.Filter):
    """Ray Tune's own advice after Ctrl+C names its Python API (Tuner.restore); the vaesweep command says
    "run the same command again to resume" instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoRayResumeHint())


def check_experiment_kept(out: Path) -> None:
    """A folder whose tables record trials but whose Ray experiment (``tune/``) is gone would train every
    trial again beside the recorded ones: refused, naming the loss and the fix."""
    if has_results(out) and not (out / RAY_FOLDER).is_dir():
        n = len(load_trials(out))
        if n:
            raise StudyFolderError(
                f"{out / RAY_FOLDER} is missing: the Ray experiment of the {n} trials recorded in {out} is gone, "
                "so they cannot resume; put that folder back, or move the study folder aside to start afresh"
            )


def _run_locked(spec: StudySpec, out: Path, address: str | None, quiet: bool) -> Path:
    init_ray(address)
    claimed = spec
    spec = spec.model_copy(update={"resources": spec.resources.resolved(ray.cluster_resources().get("GPU", 0))})
    check_resources(spec)
    _claim_dir(claimed, out)
    if spec.kind.driver is not None:  # a kind made of phases of trials (experiment: method)
        resolve(spec.kind.driver)(spec, out, quiet)
    elif spec.search.type == "optuna":
        run_search(spec, out, quiet)
    else:
        build_tuner(spec, out, quiet).fit()
    return out


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


def pack_param_space(spec, k: int | None = None) -> dict:
    """The Ray Tune param_space of a packed grid study: the shared base, and a grid over packs."""
    k = pack_size(spec) if k is None else k
    base = {"threads": max(1, int(spec.resources.cpu)), **spec.trial_base()}
    packs = [
        [{key: v for key, v in c.items() if key not in base or base[key] != v} for c in pack]
        for pack in make_packs(grid_configs(spec), k)
    ]
    return {**base, PACK_KEY: tune.grid_search(packs)}
