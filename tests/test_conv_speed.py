"""The conv net's speed settings (vaesweep.engine.models.for_speed, TrialConfig.memory_format) keep its numbers:
channels_last weights and in-place ReLUs train and evaluate the same trial to float rounding."""

import copy

import pytest
import torch
from torch import nn

from vaesweep import TrialRun
from vaesweep.engine.models import ConvVAE, for_speed, memory_format


@pytest.mark.parametrize(("relu", "decoder"), [("pairs", "bn"), ("every", "mirror")])
def test_for_speed_gives_the_same_outputs_and_gradients(relu, decoder):
    """Each ReLU placement and decoder of the conv net: in-place ReLUs are safe (autograd would raise on a
    tensor its backward needs) and channels_last changes only rounding."""
    torch.manual_seed(0)
    plain = ConvVAE((1, 28, 28), 8, width=8, relu=relu, decoder=decoder)
    fast = for_speed(copy.deepcopy(plain), torch.channels_last)
    assert all(m.inplace for m in fast.modules() if isinstance(m, nn.ReLU))
    assert fast.encoder[3].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(16, 1, 28, 28)
    for model in (plain, fast):
        mu, logvar = model.encode(x)
        model.decode(mu + logvar).sum().backward()
    assert torch.allclose(fast.decode(fast.encode(x)[0]), plain.decode(plain.encode(x)[0]), atol=1e-5)
    scale = max(p.grad.abs().max() for p in plain.parameters())  # biases before BatchNorm: 0 up to rounding
    for (name, a), b in zip(plain.named_parameters(), fast.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6 * scale), name


def test_auto_layout_is_channels_last_for_conv_on_cpu_only():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert memory_format("auto", "conv", cpu) == torch.channels_last
    assert memory_format("auto", "conv", gpu) == memory_format("auto", "dense", cpu) == torch.contiguous_format
    assert memory_format("contiguous", "conv", cpu) == torch.contiguous_format
    assert memory_format("channels_last", "conv", gpu) == torch.channels_last


def test_channels_last_trains_the_same_trial(tiny):
    """Same seed, both layouts: train losses and the collapse metrics agree to float rounding over 16 minibatches
    and two evaluations (with reconstruction gains). Conv biases before BatchNorm have zero true gradient, so
    Adam turns their float noise into +-lr steps; BatchNorm cancels them in training, its running mean in
    eval mode only nearly: hence 1e-3 on eval-mode numbers."""
    cfg = {**tiny, "arch": "conv", "conv_width": 8, "gain_every": 1}
    runs = {layout: TrialRun({**cfg, "memory_format": layout}) for layout in ("contiguous", "auto")}
    assert runs["auto"].model.encoder[3].weight.is_contiguous(memory_format=torch.channels_last)
    assert not runs["contiguous"].model.encoder[3].weight.is_contiguous(memory_format=torch.channels_last)
    reports = {layout: list(run.epochs()) for layout, run in runs.items()}
    for a, b in zip(reports["contiguous"], reports["auto"]):
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-5)
        assert b["recon"] == pytest.approx(a["recon"], rel=1e-3)
        assert b["n_active"] == a["n_active"] and b["kl_working"] == a["kl_working"]
        for la, lb in zip(a["latents"], b["latents"]):
            assert lb["var_mu"] == pytest.approx(la["var_mu"], rel=1e-3, abs=1e-4)
            assert lb["recon_gain"] == pytest.approx(la["recon_gain"], rel=1e-2, abs=0.05)
