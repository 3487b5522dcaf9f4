"""Opt-in experiment tracking through Ray Tune's own logger callbacks (``callbacks:`` in the study spec).

- ``tensorboard``: Ray's ``TBXLoggerCallback``; event files in every trial's folder under
  ``<study>/tune``, so ``tensorboard --logdir runs/<name>/tune`` shows the per-epoch scalars.
- ``mlflow``: Ray's ``MLflowLoggerCallback``; one MLflow run per trial (its config as params, the
  per-epoch metrics as histories), experiment = study name, in ``$MLFLOW_TRACKING_URI`` if set, else
  in the study's own SQLite store ``<study>/mlflow.db`` (artifacts in ``<study>/mlruns``):
  ``mlflow ui --backend-store-uri sqlite:///runs/<name>/mlflow.db``. (MLflow 3 refuses its old
  ``./mlruns`` file store unless MLFLOW_ALLOW_FILE_STORE=true; SQLite is the store it recommends.)

Both get the numbers of each epoch's result only (n_active, law_residual_max, elbo, train_loss, ...):
the per-latent tables stay in the Parquet files. A packed trial's configurations come as ``c<i>/<metric>``.
"""

from __future__ import annotations

import importlib.util
import os
from numbers import Number
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from vaesweep.config.folder import MLFLOW_ARTIFACTS, MLFLOW_DB
from vaesweep.config.spec import SpecError, StudySpec
from vaesweep.study.relocation import study_folder

NEEDS = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}  # callback -> the module its extra installs


def scalar_metrics(result: dict) -> dict:
    """The numeric entries of a reported result (bools, strings, lists and the config left out)."""
    out = {k: v for k, v in result.items() if isinstance(v, Number) and not isinstance(v, bool)}
    for i, res in enumerate(result.get("packed", [])):
        if res is not None:  # None: a configuration that ended earlier
            out.update({f"c{i}/{k}": v for k, v in scalar_metrics(res).items()})
    return out


class TensorBoardCallback(TBXLoggerCallback):
    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, scalar_metrics(result))


class MLflowCallback(MLflowLoggerCallback):
    def __init__(self, tracking_uri: str, experiment_name: str, artifacts: Path):
        super().__init__(tracking_uri, experiment_name=experiment_name)
        self.artifacts = artifacts

    def setup(self, *args, **kwargs):
        # Ray would create the experiment with MLflow's default artifact root, ./mlruns of the
        # working directory: create it first with its artifact root inside the study folder.
        from mlflow.tracking import MlflowClient

        client = MlflowClient(self.tracking_uri)
        if client.get_experiment_by_name(self.experiment_name) is None:
            client.create_experiment(self.experiment_name, artifact_location=self.artifacts.as_uri())
        super().setup(*args, **kwargs)

    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, scalar_metrics(result))

    def __setstate__(self, state):
        # Unpickled by Tuner.restore: the study's own store is the one in the folder the driver runs now
        # (a moved or copied study, vaesweep/study/relocation.py); a $MLFLOW_TRACKING_URI store stays.
        self.__dict__.update(state)
        if self.tracking_uri == _own_store(self.artifacts.parent):
            out = study_folder(self.artifacts.parent)
            self.tracking_uri, self.artifacts = _own_store(out), (out / MLFLOW_ARTIFACTS).absolute()


def _own_store(out: Path) -> str:
    """The tracking URI of the study's own MLflow store, ``<study>/mlflow.db``."""
    return f"sqlite:///{(out / MLFLOW_DB).absolute()}"


def check_extras(spec: StudySpec) -> None:
    """Refuse a tracking callback whose package is not installed, before anything starts."""
    for name in spec.callbacks:
        if importlib.util.find_spec(NEEDS[name]) is None:
            raise SpecError(f"callbacks: {name} needs the extra: pip install 'vaesweep[{name}]'")


def tracking_callbacks(spec: StudySpec, out: Path) -> list:
    """The Ray Tune callbacks the spec asks for, writing under the study folder ``out``."""
    callbacks = []
    if "tensorboard" in spec.callbacks:
        callbacks.append(TensorBoardCallback())
    if "mlflow" in spec.callbacks:
        uri = os.environ.get("MLFLOW_TRACKING_URI") or _own_store(out)
        callbacks.append(MLflowCallback(uri, spec.name, (out / MLFLOW_ARTIFACTS).absolute()))
    return callbacks
