"""Running a study on Ray Tune: spec -> param_space -> Tuner -> Parquet results.

``run_study(spec)`` starts a local Ray bound to 127.0.0.1 (no dashboard) unless an address is
given (or RAY_ADDRESS is set), checks the cluster can hold one trial (vaesweep/study/cluster.py), and runs
Ray Tune's Tuner (vaesweep/study/tuner.py, its param_space from vaesweep/study/space.py) with the Ray
trainable of the study's experiment kind (vaesweep.experiments). The experiment lives in
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

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd
import ray
import yaml
from pydantic import ValidationError

from vaesweep.config.errors import StudyFolderError, StudyInterrupted
from vaesweep.config.folder import RAY_FOLDER, SPEC_COPY, VERSIONS, has_results
from vaesweep.config.spec import SpecError, StudySpec
from vaesweep.engine.data import check_available
from vaesweep.experiments import resolve
from vaesweep.study.cluster import check_address, check_resources, init_ray, ray_output
from vaesweep.study.lock import driver_lock
from vaesweep.study.relocation import running_in
from vaesweep.study.tables import check_study_folder, load_trials, read_spec_copy
from vaesweep.study.tracking import check_extras
from vaesweep.study.tuner import build_tuner, run_search


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


def check_data(spec: StudySpec) -> None:
    """Every data set the study names is there (DataError with the fix if not), before Ray starts."""
    base, varied = spec.trial_base(), spec.space.get("dataset")
    names = varied.values if varied is not None and varied.values is not None else [base.get("dataset", "mnist5k")]
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
