"""The trial function: plain Python, determinism, checkpoints, and inside a real Ray Tune Tuner."""

import pytest
import ray
from pydantic import ValidationError
from ray import tune

import vaesweep
from vaesweep import TrainingDiverged, TrialConfig, TrialRun, train_vae


def test_reports_every_epoch_with_collapse_metrics(tiny):
    seen = []
    result = train_vae({**tiny, "epochs": 3}, report=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    last = seen[-1]
    for key in (
        "n_active",
        "n_inactive",
        "law_residual_max",
        "law_residual_mean",
        "mean_mu_abs_max",
        "recon",
        "kl",
        "elbo",
        "kl_working",
        "epoch_time",
        "time_total",
    ):
        assert key in last
    assert last["n_active"] + last["n_inactive"] == tiny["latent_dim"] == len(last["latents"])
    for row in last["latents"]:
        assert row["law"] == pytest.approx(row["var_mu"] + row["mean_sigma2"])
        assert row["active"] == (row["var_mu"] > 0.01)
    assert result.summary == {k: last[k] for k in result.summary}


def test_same_seed_same_numbers_other_seed_other_numbers(tiny):
    a = train_vae({**tiny, "seed": 3})
    b = train_vae({**tiny, "seed": 3})
    c = train_vae({**tiny, "seed": 4})
    assert a.summary == b.summary and a.latents == b.latents
    assert a.summary["elbo"] != c.summary["elbo"]


def test_resume_from_state_dict_equals_uninterrupted(tiny):
    full = train_vae({**tiny, "epochs": 4})
    first = TrialRun({**tiny, "epochs": 4})
    next(first.epochs()), next(first.epochs())
    state = first.state_dict()
    second = TrialRun({**tiny, "epochs": 4})
    second.load_state_dict(state)
    for _ in second.epochs():
        pass
    assert second.result().summary == full.summary


def test_trace_records_var_mu_every_k_steps(tiny):
    seen = []
    train_vae({**tiny, "epochs": 1, "track_every": 2}, report=seen.append)
    trace = seen[0]["trace"]
    assert [t["step"] for t in trace] == list(range(2, 9, 2))  # 512 / 64 = 8 steps
    assert all(len(t["var_mu"]) == tiny["latent_dim"] for t in trace)


def test_diverging_loss_raises_with_the_epoch(tiny):
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train_vae({**tiny, "lr": 1e3})


def test_bad_config_is_rejected_before_training(tiny):
    with pytest.raises(ValidationError, match="lam"):
        train_vae({**tiny, "lam": -1})
    with pytest.raises(ValidationError, match="latnet_dim"):
        train_vae({**tiny, "latnet_dim": 3})


@pytest.mark.slow
def test_trainable_in_a_real_ray_tune_tuner(tiny, tmp_path):
    ray.init(address="local", num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1", log_to_driver=False)
    try:
        tuner = tune.Tuner(
            vaesweep.trainable,
            param_space={**tiny, "lam": tune.grid_search([0.5, 2.0])},
            run_config=tune.RunConfig(storage_path=str(tmp_path), name="t", verbose=0),
        )
        grid = tuner.fit()
    finally:
        ray.shutdown()
    assert len(grid) == 2 and not grid.errors
    by_lam = {r.config["lam"]: r for r in grid}
    plain = train_vae({**tiny, "lam": 0.5})
    # same seed, same device: the Ray trial computes the very same numbers as plain Python
    assert by_lam[0.5].metrics["elbo"] == pytest.approx(plain.summary["elbo"], rel=1e-6)
    assert by_lam[0.5].metrics["epoch"] == tiny["epochs"] and by_lam[0.5].checkpoint is not None
    assert by_lam[2.0].metrics["kl"] < by_lam[0.5].metrics["kl"]  # a stronger KL weight, a smaller KL


def test_eval_every_auto_evaluates_about_twice_per_settle_patience_in_a_settle_window():
    cfg = TrialConfig()  # settle_min_steps 1,500, settle_patience 5: one evaluation per ~150 minibatches
    assert cfg.eval_every == "auto"
    assert cfg.for_epochs_of(32).eval_every == 5  # mnist5k: 4,000 digits at batch 128
    assert cfg.for_epochs_of(469).eval_every == 1  # full MNIST
    assert TrialConfig(eval_every=3).for_epochs_of(32).eval_every == 3  # a number is kept
    with pytest.raises(ValueError, match="for_epochs_of"):
        cfg.epoch_plan(1)


def test_auto_eval_every_reaches_the_trial(tiny):
    run = TrialRun({**tiny, "epochs": 6, "settle_min_steps": 64, "settle_patience": 2})  # 8 minibatches an epoch
    assert run.cfg.eval_every == 2
    assert [m["evaluated"] for m in run.epochs()] == [True, True, False, True, False, True]
