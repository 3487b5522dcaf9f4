"""The Ray trainable's checkpoints every ``checkpoint_every`` epochs, and the per-process data set cache,
without Ray: ``run_under_ray`` is driven with a stand-in for ``tune.report`` and ``tune.get_checkpoint``."""

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ray import tune

from vaesweep.config.errors import SpecError
from vaesweep.config.metrics import is_timing
from vaesweep.config.spec import spec_from_dict
from vaesweep.engine.data import load_dataset
from vaesweep.engine.trial import TrialRun
from vaesweep.study import trainables, tuner


class Killed(Exception):
    """The worker dies right after reporting an epoch."""


class FakeTune:
    """What run_under_ray uses of ``ray.tune``: the reports, a copy of each checkpoint, a checkpoint to resume."""

    Checkpoint = tune.Checkpoint

    def __init__(self, folder: Path, resume_from: Path | None = None, kill_after: int | None = None):
        self.folder, self.resume_from, self.kill_after = folder, resume_from, kill_after
        self.reports: list[dict] = []
        self.checkpoints: dict[int, Path] = {}  # epoch -> copy of the checkpoint reported with it

    def get_checkpoint(self):
        return None if self.resume_from is None else tune.Checkpoint.from_directory(self.resume_from)

    def report(self, metrics: dict, checkpoint=None) -> None:
        self.reports.append(metrics)
        if checkpoint is not None:
            copy = self.folder / str(metrics["epoch"])
            self.checkpoints[metrics["epoch"]] = Path(shutil.copytree(checkpoint.path, copy))
        if metrics["epoch"] == self.kill_after:
            raise Killed


@pytest.fixture
def fake_ray(monkeypatch):
    """A function installing a FakeTune into the trainables module (and a node id without Ray)."""
    node = SimpleNamespace(get_runtime_context=lambda: SimpleNamespace(get_node_id=lambda: "node-0"))
    monkeypatch.setattr(trainables, "ray", node)

    def install(fake: FakeTune) -> FakeTune:
        monkeypatch.setattr(trainables, "tune", fake)
        return fake

    return install


def without_timings(report: dict) -> dict:
    """Wall-clock seconds (the catalogue's timings) are the only numbers a resumed run may change."""
    return {k: v for k, v in report.items() if not is_timing(k)}


def test_checkpoint_every_n_epochs_and_resume_from_the_last_is_exact(tiny, tmp_path, fake_ray):
    """A trial killed between checkpoints resumes from the last one and ends with the numbers of an
    uninterrupted run; checkpoints come every 2 epochs and at the last (epoch 5)."""
    config = {**tiny, "epochs": 5, "max_train": 256, "max_eval": 128, "hidden": [32]}
    full = fake_ray(FakeTune(tmp_path / "full"))
    trainables.run_under_ray(TrialRun(config), checkpoint_every=2)
    assert [r["epoch"] for r in full.reports] == [1, 2, 3, 4, 5]
    assert sorted(full.checkpoints) == [2, 4, 5]

    killed = fake_ray(FakeTune(tmp_path / "killed", kill_after=3))
    with pytest.raises(Killed):
        trainables.run_under_ray(TrialRun(config), checkpoint_every=2)
    assert sorted(killed.checkpoints) == [2]  # epoch 3 was reported without one

    resumed = fake_ray(FakeTune(tmp_path / "resumed", resume_from=killed.checkpoints[2]))
    trainables.run_under_ray(TrialRun(config), checkpoint_every=2)
    assert [r["epoch"] for r in resumed.reports] == [3, 4, 5]  # epoch 3 trained and reported again
    # every number equal (NaN where the uninterrupted run has NaN: recon_gain off on some epochs)
    np.testing.assert_equal(list(map(without_timings, resumed.reports)), list(map(without_timings, full.reports[2:])))
    final = torch.load(resumed.checkpoints[5] / "trial.pt", weights_only=False)
    expected = torch.load(full.checkpoints[5] / "trial.pt", weights_only=False)
    assert all(torch.equal(final["model"][k], expected["model"][k]) for k in expected["model"])


class FakeTuner:
    """Stands in for ray.tune.Tuner: keeps what build_tuner gives it."""

    can_restore = staticmethod(lambda path: False)

    def __init__(self, runnable, **kwargs):
        self.kwargs = kwargs


def test_checkpoint_every_is_a_study_setting_that_reaches_the_trials(tiny, tmp_path, monkeypatch):
    """In every trial's config when above 1 (absent at 1: older studies' param_space unchanged); the study's
    Tuner reuses its workers."""
    spec = {"name": "s", "base": tiny}
    with pytest.raises(SpecError, match="checkpoint_every"):
        spec_from_dict({**spec, "checkpoint_every": 0})
    monkeypatch.setattr(tuner.tune, "Tuner", FakeTuner)
    every = {
        n: tuner.build_tuner(spec_from_dict({**spec, "checkpoint_every": n}), tmp_path / str(n), quiet=True).kwargs
        for n in (1, 5)
    }
    assert trainables.CHECKPOINT_EVERY_KEY not in every[1]["param_space"]
    assert every[5]["param_space"][trainables.CHECKPOINT_EVERY_KEY] == 5
    assert every[5]["tune_config"].reuse_actors


def test_data_sets_are_loaded_once_per_process_and_never_written(tiny, tmp_path):
    """The same arguments give the very same tensors, unchanged by a trial; other arguments miss."""
    data = load_dataset("mnist5k")
    before = data.train.clone(), data.eval.clone()
    run = TrialRun({**tiny, "epochs": 1})
    assert run.data is data and run.x_train.data_ptr() == data.train.data_ptr()  # a view: no copy
    for _ in run.epochs():
        pass
    assert torch.equal(data.train, before[0]) and torch.equal(data.eval, before[1])
    assert load_dataset("mnist5k", device="cpu") is data

    path = tmp_path / "digits.npz"
    images = np.random.default_rng(0).integers(0, 256, (600, 28, 28), dtype=np.uint8)
    np.savez(path, x=images)
    own = load_dataset(f"npz:{path}")
    assert own is not data and load_dataset(f"npz:{path}") is own
    np.savez(path, x=images[:550])  # the file rewritten: loaded again
    again = load_dataset(f"npz:{path}")
    assert again is not own and len(again.train) + len(again.eval) == 550


def test_a_settled_stop_between_checkpoints_is_checkpointed(tiny, tmp_path, fake_ray):
    """With checkpoint_every 4, a trial that settles at epoch 2 of 6 still leaves its final state."""
    config = {
        **tiny,
        "epochs": 6,
        "max_train": 256,
        "max_eval": 128,
        "hidden": [32],
        "eval_every": 1,
        "settle_patience": 2,
        "settle_min_steps": 0,
        "settle_law_tol": 100.0,
        "active_threshold": 1e-6,
        "stop_when": "settled",
    }
    fake = fake_ray(FakeTune(tmp_path / "stopped"))
    trainables.run_under_ray(TrialRun(config), checkpoint_every=4)
    assert [r["epoch"] for r in fake.reports] == [1, 2]
    assert fake.reports[-1]["stopped_reason"] == "settled"
    assert sorted(fake.checkpoints) == [2]
