"""The Ray Tune function trainables: the engine's trials driven under Ray.

    tune.Tuner(vaesweep.trainable, param_space={"lam": tune.grid_search([0.5, 1, 2])}).fit()

Each reports every epoch with Ray's ``tune.report`` and a checkpoint of the whole trial state, and
resumes from ``tune.get_checkpoint()`` after a failure or a restored study. Same numbers for the
same seed as ``vaesweep.train_vae`` (plain Python) and ``python -m vaesweep train``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
import torch
from ray import tune

from vaesweep.config.errors import TrainingDiverged
from vaesweep.config.noise import NOISE_KEY
from vaesweep.config.packing import pack_configs
from vaesweep.engine.noise import NoiseExperiment
from vaesweep.engine.packing import PackedRun
from vaesweep.engine.trial import CHECKPOINT_FILE, TrialRun


def trainable(config: dict) -> None:
    """Ray Tune function trainable: ``tune.Tuner(vaesweep.trainable, param_space=...)``.

    Reports every epoch with Ray's ``tune.report`` and a checkpoint of the whole trial state,
    and resumes from ``tune.get_checkpoint()`` after a failure or a restored study.
    """
    run_under_ray(TrialRun({k: v for k, v in config.items() if not k.startswith("_")}))


def run_under_ray(run) -> None:
    """Drive a trial under Ray Tune: a ``TrialRun``, or anything with its ``epochs()``,
    ``state_dict()``, ``load_state_dict()`` and ``final_metrics()`` (the noise experiment).

    Restores from Ray's checkpoint, reports every epoch (with the node that ran it) and a
    checkpoint, and ends a diverged trial with its reason instead of letting Ray retry it.
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run.load_state_dict(torch.load(Path(d) / CHECKPOINT_FILE, weights_only=False))
    node = ray.get_runtime_context().get_node_id()  # which cluster node ran each epoch
    reported = False
    try:
        for metrics in run.epochs():
            metrics["node"] = node
            with tempfile.TemporaryDirectory() as d:
                torch.save(run.state_dict(), Path(d) / CHECKPOINT_FILE)
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
            reported = True
        final = run.final_metrics()
        if not reported and final is not None:
            # Restored from its final checkpoint (the driver died around the last report):
            # report the final epoch again so the study's tables surely hold it.
            tune.report(final)
    except TrainingDiverged as err:
        # Deterministic: a retry from the last checkpoint would diverge again. End the trial and
        # let the study record it as failed with its reason.
        tune.report({"diverged": str(err)})


def packed_trainable(config: dict) -> None:
    """Ray Tune function trainable of a pack: ``config[PACK_KEY]`` lists the configurations.

    Reports ``{"epoch": e, "packed": [metrics_0, ..., metrics_K-1]}`` each epoch with a checkpoint
    holding ``p<i>/trial.pt`` (a TrialRun state dict) per configuration, and resumes from it.
    """
    run = PackedRun(pack_configs(config))
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            run.load_state_dicts([torch.load(Path(d) / f"p{i}" / CHECKPOINT_FILE, weights_only=False)
                                  for i in range(run.k)])
    reported = False
    for metrics in run.epochs():
        with tempfile.TemporaryDirectory() as d:
            for i, state in enumerate(run.state_dicts()):
                (Path(d) / f"p{i}").mkdir()
                torch.save(state, Path(d) / f"p{i}" / CHECKPOINT_FILE)
            tune.report({"epoch": run.epoch, "packed": metrics}, checkpoint=tune.Checkpoint.from_directory(d))
        reported = True
        if all(msg is not None for msg in run.diverged):
            return  # every configuration diverged (deterministic): nothing left to train
    if not reported and any(run.histories):
        # Restored from the final checkpoint: report the last epoch again so the tables surely hold it.
        tune.report({"epoch": run.epoch, "packed": [
            {"diverged": run.diverged[i]} if run.diverged[i] else {**h[-1], "latents": run.last_evals[i]["latents"]}
            for i, h in enumerate(run.histories)]})


def noise_trainable(config: dict) -> None:
    """Ray Tune function trainable of the experiment; settings in ``config["_noise"]``.

    Driven like ``vaesweep.trainable``: a checkpoint of the trial and the phase state every
    epoch, resumed from ``tune.get_checkpoint()``.
    """
    run_under_ray(NoiseExperiment({k: v for k, v in config.items() if not k.startswith("_")},
                                  config.get(NOISE_KEY) or {}))
