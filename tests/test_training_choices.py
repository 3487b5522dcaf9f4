"""Issue 23: the paper's unstated training choices as settings (init, Adam epsilon, clipped BCE, BatchNorm
momentum/eps, the conv net's ReLU placement and decoder, preset keras2019), each reaching the objects it sets."""

from __future__ import annotations

import copy
import math

import pandas as pd
import pytest
import torch
from torch import nn

from analysis.design import with_defaults
from vaesweep.config.trial import PRESETS, TrialConfig, recipe
from vaesweep.engine.losses import reconstruction_error
from vaesweep.engine.models import model_for
from vaesweep.engine.packing import PackedRun
from vaesweep.engine.trial import TrialRun, train_vae


@pytest.fixture
def small(tiny):
    return {**tiny, "epochs": 1, "max_train": 256, "max_eval": 100}


def layers(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d)]


def glorot_bound(weight: torch.Tensor) -> float:
    fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(weight)
    return math.sqrt(6 / (fan_in + fan_out))


@pytest.mark.parametrize("arch", ["dense", "conv"])
def test_keras_init_is_glorot_uniform_with_zero_biases(arch):
    torch.manual_seed(0)
    model = model_for(TrialConfig(arch=arch, init="keras"), (1, 28, 28))
    for m in layers(model):
        bound = glorot_bound(m.weight)
        assert m.weight.abs().max() <= bound
        assert m.weight.abs().max() > 0.9 * bound  # drawn over the whole interval, not a narrower one
        assert torch.all(m.bias == 0)
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_each_init_factor_changes_only_its_part():
    def build(init):
        torch.manual_seed(3)
        return layers(model_for(TrialConfig(init=init), (1, 28, 28)))

    torch_, weights, biases = build("torch"), build("keras_weights"), build("keras_biases")
    for t, w, b in zip(torch_, weights, biases):
        assert torch.equal(t.bias, w.bias) and not torch.equal(t.weight, w.weight)  # only the weights redrawn
        assert torch.equal(t.weight, b.weight) and torch.all(b.bias == 0)  # only the biases zeroed
        assert t.weight.abs().max() <= 1 / math.sqrt(t.weight.shape[1]) + 1e-7  # torch: U(+-1/sqrt(fan_in))


def test_keras_init_same_seed_same_numbers(small):
    cfg = {**small, "init": "keras", "seed": 4}
    a, b = train_vae(cfg), train_vae(cfg)
    assert a.summary == b.summary
    assert train_vae({**cfg, "init": "torch"}).summary["elbo"] != a.summary["elbo"]


@pytest.mark.parametrize("init", ["torch", "keras", "keras_weights", "keras_biases"])
def test_packed_equals_plain_under_each_init(small, init):
    cfgs = [{**small, "init": init, "seed": 1, "lam": 0.5}, {**small, "init": init, "seed": 2, "latent_dim": 3}]
    run = PackedRun(cfgs)
    for _ in run.epochs():
        pass
    for i, cfg in enumerate(cfgs):
        plain = train_vae(cfg)
        assert run.results()[i].summary["elbo"] == pytest.approx(plain.summary["elbo"], rel=1e-5)
        assert run.results()[i].summary["n_active"] == plain.summary["n_active"]


def test_preset_fields_reach_the_optimiser_the_loss_and_batchnorm(small):
    conv = {**small, "arch": "conv", "conv_width": 8, "preset": "keras2019"}
    for run in (TrialRun(conv), PackedRun([conv, {**conv, "seed": 1}])):
        assert all(g["eps"] == 1e-7 for g in run.optimizer.param_groups)
    bns = [m for m in TrialRun(conv).model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(bn.momentum == 0.01 and bn.eps == 1e-3 for bn in bns)
    assert PRESETS["keras2019"]["bce_clip"] == TrialConfig(**conv).bce_clip == 1e-7
    # an explicit field wins over the preset's
    assert TrialConfig(preset="keras2019", init="torch", adam_eps=1e-8).model_dump()["init"] == "torch"


def test_clipped_bce_is_keras_binary_crossentropy():
    """Keras clips sigmoid(logits) to [eps, 1 - eps], then takes the cross-entropy; beyond, no gradient."""
    eps = 1e-7
    logits = torch.tensor([[-30.0, -5.0, 0.0, 5.0, 30.0]], requires_grad=True)
    x = torch.tensor([[1.0, 0.2, 0.3, 0.8, 0.0]])
    err = reconstruction_error(logits, x, "bce", eps)
    p = torch.sigmoid(logits.detach().double()).clamp(eps, 1 - eps)
    keras = -(x.double() * p.log() + (1 - x.double()) * (1 - p).log()).sum()
    assert err.item() == pytest.approx(keras.item(), rel=1e-5)
    err.sum().backward()
    assert logits.grad[0, 0] == 0 and logits.grad[0, 4] == 0  # clipped: no gradient
    assert torch.all(logits.grad[0, 1:4] != 0)
    exact = reconstruction_error(logits.detach(), x, "bce")
    assert exact.item() == pytest.approx(err.item() + 2 * (30 - math.log((1 - eps) / eps)), rel=1e-4)  # 2 wrong pixels


def test_bce_clip_reaches_the_training_loss_plain_and_packed(small):
    """Probabilities clipped to [0.4, 0.6] cost every pixel at least -log(0.6): the train loss of plain and packed
    runs stays above 784 x that floor, while the exact loss of the same run falls far below it."""
    cfg = {**small, "epochs": 2, "max_train": 2048}
    floor = -math.log(0.6) * 28 * 28
    clipped = {**cfg, "bce_clip": 0.4}
    packed = PackedRun([clipped, {**clipped, "seed": 1}])
    for _ in packed.epochs():
        pass
    runs = [train_vae(clipped).history, packed.records[0].history, packed.records[1].history]
    assert all(h["train_recon"] >= floor for history in runs for h in history)
    assert train_vae(cfg).history[-1]["train_recon"] < 0.7 * floor


@pytest.mark.parametrize("relu", ["pairs", "every"])
@pytest.mark.parametrize("decoder", ["bn", "mirror"])
def test_conv_options_keep_fig4_encoder_and_train(small, relu, decoder):
    cfg = TrialConfig(**{**small, "arch": "conv", "conv_relu": relu, "conv_decoder": decoder, "latent_dim": 16})
    torch.manual_seed(0)
    model = model_for(cfg, (1, 28, 28))
    encoder = [p.numel() for n, p in model.named_parameters() if not n.startswith("decoder")]
    assert sum(encoder) == 46432 - 224  # Fig. 4's count, less Keras' 224 BatchNorm moving statistics
    n_relu = sum(isinstance(m, nn.ReLU) for m in model.encoder)
    assert n_relu == (4 if relu == "pairs" else 4 + 3 + 1)  # every: after each pair's first conv and the last
    n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.decoder)
    assert n_bn == (4 if decoder == "bn" else 0)
    out = model.decode(torch.zeros(2, cfg.latent_dim))
    assert out.shape == (2, 1, 28, 28)
    result = train_vae({**small, "arch": "conv", "conv_width": 8, "conv_relu": relu, "conv_decoder": decoder})
    assert math.isfinite(result.summary["elbo"])


def test_tables_read_a_presets_fields_where_the_trial_did_not_give_them():
    """A trials table holds the fields a study set: under preset keras2019 the others are the preset's (as
    TrialConfig resolves them), an explicit field wins, and each row's recipe says so."""
    trials = pd.DataFrame(
        {"trial_id": ["a", "b", "c"], "preset": [None, "keras2019", "keras2019"], "init": ["torch", None, "torch"]}
    )
    df = with_defaults(trials)
    assert list(df["init"]) == ["torch", "keras", "torch"]
    assert list(df["adam_eps"]) == [1e-8, 1e-7, 1e-7] and list(df["bn_momentum"]) == [0.1, 0.01, 0.01]
    assert [recipe(r) for r in df.to_dict("records")] == [
        "init torch",
        "preset keras2019",
        "preset keras2019, init torch",
    ]
    for row in df.to_dict("records"):  # the same values TrialConfig resolves from what the trial gave
        given = {k: v for k, v in trials.set_index("trial_id").loc[row["trial_id"]].items() if pd.notna(v)}
        resolved = TrialConfig(**given)
        assert (row["init"], row["adam_eps"], row["bce_clip"]) == (resolved.init, resolved.adam_eps, resolved.bce_clip)


def test_a_contiguous_checkpoint_resumes_into_a_channels_last_run(small):
    """A conv checkpoint from before channels_last (memory_format: contiguous) resumed where the conv net is
    channels_last: Adam's moments are the checkpoint's, index by index, laid out like their parameters, and the
    next epoch matches the contiguous run's to float rounding (misaligned moments move it by ~lr)."""
    conv = {**small, "arch": "conv", "conv_width": 8, "epochs": 2, "device": "cpu"}
    old = TrialRun({**conv, "memory_format": "contiguous"})
    next(old.epochs())
    state = copy.deepcopy(old.state_dict())  # as written to disk: no tensor shared with the running trial
    new = TrialRun({**conv, "memory_format": "channels_last"})
    new.load_state_dict(state)
    saved = state["optimizer"]["state"]
    for i, p in enumerate(new.model.parameters()):
        moments = new.optimizer.state[p]
        for key in ("exp_avg", "exp_avg_sq"):
            assert moments[key].stride() == p.stride()
            assert torch.equal(moments[key], saved[i][key])
    assert next(new.epochs())["train_loss"] == pytest.approx(next(old.epochs())["train_loss"], rel=1e-4)
