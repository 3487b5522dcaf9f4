"""The Ray Tune function trainables: the engine's trials driven under Ray.

    tune.Tuner(vaesweep.trainable, param_space={"lam": tune.grid_search([0.5, 1, 2])}).fit()

Each reports every epoch with Ray's ``tune.report``, with a checkpoint of the whole trial state every
``checkpoint_every`` epochs (the study's setting, in ``config["_checkpoint_every"]``) and at its last epoch,
and resumes from ``tune.get_checkpoint()`` after a failure or a restored study: the epochs after that
checkpoint are trained again to the same numbers and reported again (the study's recorder keeps the later
report). Same numbers for the same seed as ``vaesweep.train_vae`` (plain Python) and ``python -m vaesweep train``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import ray
from ray import tune

from vaesweep.config.errors import DataError, TrainingDiverged
from vaesweep.config.packing import PACK_KEY, pack_configs
from vaesweep.engine.checkpoints import load_run, save_run
from vaesweep.engine.noise import NoiseExperiment
from vaesweep.engine.packing import PackedRun
from vaesweep.engine.run import Run
from vaesweep.engine.trial import TrialRun
from vaesweep.experiments.noise import NOISE_KEY

CHECKPOINT_EVERY_KEY = "_checkpoint_every"  # param_space key of the study's checkpoint_every (absent: 1)


def trainable(config: dict) -> None:
    """Ray Tune function trainable: ``tune.Tuner(vaesweep.trainable, param_space=...)``.

    Reports every epoch with Ray's ``tune.report``, with a checkpoint of the whole trial state every
    ``checkpoint_every`` epochs and at the last, and resumes from ``tune.get_checkpoint()`` after a
    failure or a restored study.
    """
    run = _started(lambda: TrialRun({k: v for k, v in config.items() if not k.startswith("_")}), config)
    if run is not None:
        run_under_ray(run, _every(config))


def packed_trainable(config: dict) -> None:
    """Ray Tune function trainable of a pack: ``config[PACK_KEY]`` lists the configurations.

    Reports ``{"epoch": e, "packed": [metrics_0, ..., metrics_K-1]}`` each epoch (the study's
    recorder splits it into one trial per configuration), checkpointed and resumed as every trial.
    """
    run = _started(lambda: PackedRun(pack_configs(config)), config)
    if run is not None:
        run_under_ray(run, _every(config))


def noise_trainable(config: dict) -> None:
    """Ray Tune function trainable of the experiment; settings in ``config["_noise"]``.

    Driven like ``vaesweep.trainable``: a checkpoint of the trial and the phase state every
    ``checkpoint_every`` epochs and at the last, resumed from ``tune.get_checkpoint()``.
    """
    run = _started(
        lambda: NoiseExperiment(
            {k: v for k, v in config.items() if not k.startswith("_")}, config.get(NOISE_KEY) or {}
        ),
        config,
    )
    if run is not None:
        run_under_ray(run, _every(config))


def _started(make, config: dict):
    """``make()``, the trial's run (its data loaded); None once a data set that cannot load has ended the trial
    as failed with its reason: the same data would fail every retry, so Ray is not asked for one."""
    try:
        return make()
    except DataError as err:
        failed = {"diverged": f"DataError: {err}"}
        tune.report({"packed": [failed] * len(config[PACK_KEY])} if PACK_KEY in config else failed)
        return None


def _every(config: dict) -> int:
    return int(config.get(CHECKPOINT_EVERY_KEY, 1))


def ray_report(run: Run, metrics: dict | list[dict | None], node: str | None = None) -> dict:
    """What Ray gets for one epoch's ``metrics``: a plain run's dict, or a pack's
    ``{"epoch", "packed": [...]}``; every trained configuration's row names the ``node`` that ran it."""

    def tagged(m: dict | None) -> dict | None:  # None: a configuration of the pack that ended earlier
        return m if m is None or node is None or "diverged" in m else {**m, "node": node}

    if run.packed:
        return {"epoch": run.epoch, "packed": [tagged(m) for m in metrics]}
    return tagged(metrics)


def run_under_ray(run: Run, checkpoint_every: int = 1) -> None:
    """Drive a run under Ray Tune: a ``TrialRun``, a ``PackedRun`` or a ``NoiseExperiment`` (vaesweep.engine.run.Run;
    vaesweep.engine.checkpoints saves and restores them).

    Restores from Ray's checkpoint, reports every epoch (with the node that ran it), with a checkpoint
    every ``checkpoint_every`` epochs and at the last, and ends a diverged trial with its reason instead
    of letting Ray retry it.
    """
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            load_run(run, Path(d))
    node = ray.get_runtime_context().get_node_id()  # which cluster node ran each epoch
    reported = False
    try:
        for metrics in run.epochs():
            report = ray_report(run, metrics, node)
            if report.get("epoch", 0) % checkpoint_every == 0 or run.finished:
                with tempfile.TemporaryDirectory() as d:
                    save_run(run, Path(d))
                    tune.report(report, checkpoint=tune.Checkpoint.from_directory(d))
            else:
                tune.report(report)
            reported = True
        final = run.final_metrics()
        if not reported and final is not None:
            # Restored from its final checkpoint (the driver died around the last report):
            # report the final epoch again so the study's tables surely hold it.
            tune.report(ray_report(run, final))
    except (TrainingDiverged, DataError) as err:
        # Deterministic: a retry from the last checkpoint would diverge again. End the trial and
        # let the study record it as failed with its reason.
        tune.report({"diverged": str(err)})
