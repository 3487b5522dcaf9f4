"""The Sec. 5 noise experiment (vaesweep.engine.noise): phases, transform, restore, spec, study, Fig. 7 chart."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
import yaml
from conftest import vaesweep_cli

from analysis.noise import noise_chart, plot_noise_experiment
from vaesweep.config.spec import SpecError, spec_from_dict
from vaesweep.engine.noise import PHASES, NoiseExperiment, NoiseSettings, run_noise_experiment
from vaesweep.study.recorder import Recorder
from vaesweep.study.tables import load_study

TINY = {
    "max_train": 256,
    "max_eval": 128,
    "hidden": [64, 16],
    "latent_dim": 4,
    "batch_size": 64,
    "threads": 1,
    "fid": False,
}
# sigma reaches sigma_max after two levels whatever the threshold does: every phase is certain
SHORT = NoiseSettings(base_epochs=3, sigma_step=1.0, sigma_max=2.0, hold_epochs=2, recovery_epochs=2)
NOISE_COLS = ("noise_gain", "noise_gain_clean", "noise_kl", "noise_var_mu", "noise_mean_sigma2")


@pytest.fixture(scope="module")
def short_run():
    reported = []
    result = run_noise_experiment(TINY, SHORT, report=reported.append)
    return result, reported


def test_every_phase_in_order_with_its_noise(short_run):
    result, reported = short_run
    df = pd.DataFrame(result.history)
    assert len(reported) == len(df) and [m["epoch"] for m in reported] == list(df["epoch"])
    phases = list(df["phase"])
    assert phases[:3] == ["base"] * 3 and phases[-2:] == ["recovery"] * 2
    assert set(phases) == set(PHASES)
    assert phases == sorted(phases, key=PHASES.index)  # no phase comes back once left
    rising, held = df[df["phase"] == "noise_rising"], df[df["phase"] == "noise_held"]
    assert list(rising["noise_sigma"]) == pytest.approx([1.0, 2.0][: len(rising)])
    assert (held["noise_sigma"] == rising["noise_sigma"].iloc[-1]).all()  # frozen after the threshold
    assert (df.loc[df["phase"].isin(["base", "recovery"]), "noise_sigma"] == 0).all()
    # the variable is chosen at the end of the base phase; from then on every epoch has its numbers
    chosen = df.iloc[2:]
    assert chosen["noise_variable"].nunique() == 1 and 0 <= chosen["noise_variable"].iloc[0] < 4
    for col in NOISE_COLS:
        assert chosen[col].map(math.isfinite).all(), col
    assert (chosen["noise_mean_sigma2"] > 0).all() and (chosen["noise_kl"] >= 0).all()
    # without noise the two gains are the same number; with it, they differ
    recovery = df[df["phase"] == "recovery"]
    assert recovery["noise_gain"].tolist() == pytest.approx(recovery["noise_gain_clean"].tolist())
    assert (rising["noise_gain"] != rising["noise_gain_clean"]).all()
    assert result.summary["noise_end_epoch"] == held["epoch"].max()
    assert len(reported[-1]["latents"]) == 4 and result.summary["n_active"] == reported[-1]["n_active"]


def test_threshold_stops_the_noise_and_collapse_and_revival_are_dated():
    exp = NoiseExperiment(
        TINY,
        NoiseSettings(
            base_epochs=1,
            variable=1,
            sigma_step=0.5,
            hold_epochs=2,
            recovery_epochs=3,
            collapse_gain=0.1,
            revive_gain=1.0,
        ),
    )
    exp.state.phase = "noise_rising"

    def row(gain, kl, sigma2=0.5):
        return {"noise_gain": gain, "noise_gain_clean": gain, "noise_kl": kl, "noise_mean_sigma2": sigma2}

    exp.state.phase_epochs = 1
    exp._advance("noise_rising", 10, row(5.0, 1.0))  # gain > KL: keep raising
    assert exp.state.phase == "noise_rising" and exp.state.threshold_epoch is None
    exp._advance("noise_rising", 11, row(0.8, 1.0))  # gain < KL: stop, hold the noise
    assert exp.state.phase == "noise_held" and exp.state.threshold_epoch == 11
    assert exp.state.last_epoch == 11 + 2 + 3 and exp.run.cfg.epochs == 16
    exp.state.phase_epochs = 1
    exp._advance("noise_held", 12, row(0.05, 0.2, sigma2=0.95))  # gain ~ 0, mean_sigma2 ~ 1: collapsed
    assert exp.state.collapsed_epoch == 12 and exp.state.phase == "noise_held"
    exp.state.phase_epochs = 2
    exp._advance("noise_held", 13, row(0.01, 0.1, sigma2=0.99))
    assert exp.state.phase == "recovery" and exp.state.sigma == 0 and exp.state.noise_end_epoch == 13
    for epoch, gain in ((14, 0.5), (15, 1.5), (16, 0.5)):
        exp.state.phase_epochs += 1
        exp._advance("recovery", epoch, row(gain, 0.3))
    assert exp.state.revived_epoch == 15 and exp.state.phase == "done"  # first revival kept; ends at 16


def test_transform_freezes_inactive_and_noises_only_the_variable():
    exp = NoiseExperiment(TINY, NoiseSettings(base_epochs=1, variable=2, sigma_step=0.5))
    assert exp.transform() is None  # base phase: plain training
    exp.state.phase, exp.state.frozen, exp.state.sigma = "noise_rising", [0, 3], 0.5
    z = torch.randn(256, 4)
    out = exp.transform()(z)
    assert (out[:, [0, 3]] == 0).all() and torch.equal(out[:, 1], z[:, 1])
    added = out[:, 2] - z[:, 2]
    assert 0.4 < added.std().item() < 0.6 and abs(added.mean().item()) < 0.15
    exp.state.sigma = 0.0  # recovery: no noise, frozen still zeroed
    assert torch.equal(exp.transform()(z), z * torch.tensor([0.0, 1, 1, 0]))


def test_restored_experiment_goes_on_exactly(short_run):
    result, _ = short_run
    first = NoiseExperiment(TINY, SHORT)
    for _ in range(5):  # into the noisy phases
        first.run_epoch()
    state = first.state_dict()
    resumed = NoiseExperiment(TINY, SHORT)
    resumed.load_state_dict(state)
    assert resumed.state == first.state and resumed.state.phase != "base"
    rest = list(resumed.epochs())
    keys = ["epoch", "phase", "noise_sigma", *NOISE_COLS, "train_loss"]
    got = pd.DataFrame(resumed.run.history)[keys]
    pd.testing.assert_frame_equal(got, pd.DataFrame(result.history)[keys])
    assert len(rest) == len(result.history) - 5


def test_recorder_keeps_the_phase_and_noise_columns(short_run, tmp_path):
    _, reported = short_run
    rec = Recorder(tmp_path)
    for m in reported:
        rec.add_result("t1", m)
    epochs = rec.tables().epochs
    assert list(epochs["phase"]) == [m["phase"] for m in reported]
    assert {*NOISE_COLS, "noise_sigma", "noise_variable", "noise_threshold_epoch", "noise_revived_epoch"} <= set(epochs)
    png = plot_noise_experiment(epochs, tmp_path / "fig7.png")
    assert png.stat().st_size > 10_000
    # 3 base epochs of 4 minibatches: the default settle window (1,500 minibatches) is far off
    assert {"settled", "settled_step"} <= set(epochs) and not epochs["settled"].any()
    chart = noise_chart(epochs)
    assert list(chart.tables["noise_events"]["base_settled"]) == [False]
    assert "had not settled before the noise in 1 of 1 trials" in chart.reading


@pytest.mark.parametrize(
    "change, message",
    [
        ({"noise": {"base_epochs": 3}}, "noise: settings of experiment: noise"),
        ({"experiment": "noise", "base": {"epochs": 3}}, "base.epochs: not used by experiment: noise"),
        ({"experiment": "noise", "noise": {"variable": 16}}, "noise.variable: variable 16 does not exist"),
        ({"experiment": "noise", "noise": {"sigma_step": 2, "sigma_max": 1}}, "lower sigma_step or raise sigma_max"),
        ({"experiment": "noise", "noise": {"hold_epoch": 2}}, "noise.hold_epoch: unknown key"),
        ({"experiment": "noise", "scheduler": {"type": "asha"}}, "scheduler: early stopping"),
    ],
)
def test_bad_noise_specs_name_the_field(change, message):
    with pytest.raises(SpecError, match=message):
        spec_from_dict({"name": "n", **change})


def test_shipped_noise_study_is_valid():
    from conftest import ROOT

    from vaesweep.config.spec import load_spec
    from vaesweep.study.space import param_space

    spec = load_spec(ROOT / "studies" / "noise.yaml")
    assert spec.experiment == "noise" and spec.trial_base()["latent_dim"] == 16
    written = NoiseSettings(**yaml.safe_load((ROOT / "studies" / "noise.yaml").read_text())["noise"])
    assert param_space(spec)["_noise"] == spec.kind_settings.model_dump() == written.model_dump()


@pytest.mark.slow
def test_noise_study_through_the_cli(tmp_path):
    spec = {
        "name": "tinynoise",
        "dataset": "mnist5k",
        "experiment": "noise",
        "base": TINY,
        "noise": SHORT.model_dump(),
        "seeds": 1,
        "resources": {"cpu": 1, "gpu": 0},
        "retries": 0,
    }
    path = tmp_path / "tinynoise.yaml"
    path.write_text(yaml.safe_dump(spec))
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs", "--quiet")
    assert res.returncode == 0, res.stderr[-3000:]
    t = load_study(tmp_path / "runs" / "tinynoise")
    assert len(t.trials) == 1 and t.trials["status"].eq("done").all()
    assert set(t.epochs["phase"]) == set(PHASES)
    assert t.epochs["epoch"].tolist() == list(range(1, len(t.epochs) + 1))
    sigmas = t.epochs.loc[t.epochs["phase"] == "noise_rising", "noise_sigma"].tolist()
    assert sigmas == [1.0, 2.0][: len(sigmas)]
    assert t.trials["noise_end_epoch"].iloc[0] == t.epochs.loc[t.epochs["phase"] == "noise_held", "epoch"].max()
    assert len(t.latent_history) == 4 * len(t.epochs)  # every epoch evaluated
