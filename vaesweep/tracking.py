"""Opt-in experiment tracking through Ray Tune's own logger callbacks (``callbacks:`` in the study spec).

- ``tensorboard``: Ray's ``TBXLoggerCallback``; event files in every trial's folder under
  ``<study>/tune``, so ``tensorboard --logdir runs/<name>/tune`` shows the per-epoch scalars.
- ``mlflow``: Ray's ``MLflowLoggerCallback``; one MLflow run per trial (its config as params, the
  per-epoch metrics as histories) in the file store ``<study>/mlruns``, experiment = study name:
  ``mlflow ui --backend-store-uri runs/<name>/mlruns``.

Both get the numbers of each epoch's result only (n_active, law_residual_max, elbo, train_loss, ...):
the per-latent tables stay in the Parquet files. A packed trial's configurations come as ``c<i>/<metric>``.
"""

from __future__ import annotations

import importlib.util
from numbers import Number
from pathlib import Path

from ray.air.integrations.mlflow import MLflowLoggerCallback
from ray.tune.logger import TBXLoggerCallback

from .spec import SpecError, StudySpec

MLRUNS = "mlruns"
NEEDS = {"tensorboard": "tensorboardX", "mlflow": "mlflow"}  # callback -> the module its extra installs


def scalar_metrics(result: dict) -> dict:
    """The numeric entries of a reported result (bools, strings, lists and the config left out)."""
    out = {k: v for k, v in result.items() if isinstance(v, Number) and not isinstance(v, bool)}
    for i, res in enumerate(result.get("packed", [])):
        out.update({f"c{i}/{k}": v for k, v in scalar_metrics(res).items()})
    return out


class TensorBoardCallback(TBXLoggerCallback):
    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, scalar_metrics(result))


class MLflowCallback(MLflowLoggerCallback):
    def log_trial_result(self, iteration, trial, result):
        super().log_trial_result(iteration, trial, scalar_metrics(result))


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
        callbacks.append(MLflowCallback(tracking_uri=(out / MLRUNS).absolute().as_uri(),
                                        experiment_name=spec.name))
    return callbacks
