"""Collapse metrics and the loss against hand computations on known encoder outputs."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaesweep.engine.latents import Tolerances, evaluate, moment_stats, reconstruction_gain, summarize
from vaesweep.engine.losses import (
    KLSchedule,
    KLSchedules,
    kl_per_variable,
    kl_target,
    kl_term,
    kl_weight,
    reconstruction_error,
)


class KnownModel(torch.nn.Module):
    """encode() returns fixed (mu, logvar); decode() uses only z[:, 0] (z[:, 1] is ignored).

    The images are exactly decode(mu), so the error decoding the means is 0."""

    def __init__(self, mu, logvar):
        super().__init__()
        self.mu_, self.logvar_ = mu, logvar
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def encode(self, x):
        return self.mu_[: len(x)], self.logvar_[: len(x)]

    def decode(self, z):
        return (z[:, :1] * 4.0).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()


def known_case():
    mu = torch.tensor([[1.0, 0.0], [-1.0, 0.1], [2.0, -0.1], [0.0, 0.0]])
    logvar = torch.log(torch.tensor([[0.1, 1.0], [0.2, 0.9], [0.3, 1.1], [0.4, 1.0]]))
    x = torch.sigmoid(4.0 * mu[:, :1]).view(-1, 1, 1, 1).expand(-1, 1, 2, 2).clone()  # = decode(mu)
    return mu, logvar, x


def test_moments_match_hand_computation():
    mu, logvar, _ = known_case()
    s = moment_stats(mu, logvar)
    # variable 0: mu = 1, -1, 2, 0 -> mean 0.5, population variance (0.25+2.25+2.25+0.25)/4 = 1.25
    assert s["mean_mu"][0].item() == pytest.approx(0.5)
    assert s["var_mu"][0].item() == pytest.approx(1.25)
    assert s["mean_sigma2"][0].item() == pytest.approx(0.25)
    assert s["mean_sigma2"][1].item() == pytest.approx(1.0)
    assert s["var_mu"][1].item() == pytest.approx(0.005)
    # Sec. 4 variance law: law = var_mu + mean_sigma2, exactly
    assert torch.allclose(s["law"], s["var_mu"] + s["mean_sigma2"])
    # eq. (3), averaged over the data
    by_hand = 0.5 * (mu**2 + logvar.exp() - logvar - 1).mean(0)
    assert torch.allclose(s["kl"], by_hand)


def test_kl_closed_form_equals_torch_distributions():
    mu, logvar = torch.randn(8, 5), torch.randn(8, 5)
    ref = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0))
    assert torch.allclose(kl_per_variable(mu, logvar), ref, atol=1e-6)


def test_reconstruction_gain_is_zero_for_an_ignored_variable():
    mu, logvar, x = known_case()
    model = KnownModel(mu, logvar)
    gain = reconstruction_gain(model, x, mu, "mse")
    assert gain[1].item() == pytest.approx(0.0, abs=1e-7)  # decoder ignores z_1
    assert gain[0].item() > 0.01  # zeroing z_0 changes the image
    # by hand for variable 0: error(zeroed) - error(all) on the mse decoder
    target = x
    err = lambda z: reconstruction_error(model.decode(z), target, "mse").mean()  # noqa: E731
    zeroed = mu.clone()
    zeroed[:, 0] = 0
    assert gain[0].item() == pytest.approx((err(zeroed) - err(mu)).item(), rel=1e-5)


def test_summary_flags_inactive_variables_and_kl_working():
    per_var = {
        "mean_mu": torch.tensor([0.02, 0.0, 0.5]),
        "var_mu": torch.tensor([0.97, 0.0001, 0.9]),
        "mean_sigma2": torch.tensor([0.01, 0.99, 0.1]),
        "kl": torch.tensor([2.0, 0.001, 1.5]),
        "recon_gain": torch.tensor([50.0, 0.0, 10.0]),
    }
    per_var["law"] = per_var["var_mu"] + per_var["mean_sigma2"]
    out = summarize(per_var, torch.tensor(100.0), Tolerances(0.01, 0.15, 0.15))
    s = out["summary"]
    assert (s["n_active"], s["n_inactive"]) == (2, 1)
    assert [r["active"] for r in out["latents"]] == [True, False, True]
    assert s["law_residual_max"] == pytest.approx(0.02, abs=1e-6)
    assert s["mean_mu_abs_max"] == pytest.approx(0.5)
    assert s["kl_working"] is False  # first moment 0.5 > mu_tol
    assert s["kl"] == pytest.approx(3.501, abs=1e-4)
    assert s["elbo"] == pytest.approx(-(100.0 + 3.501), abs=1e-3)
    per_var["mean_mu"][2] = 0.1
    assert summarize(per_var, torch.tensor(100.0), Tolerances())["summary"]["kl_working"] is True


def test_evaluate_runs_on_known_model():
    mu, logvar, x = known_case()
    out = evaluate(KnownModel(mu, logvar), x, "mse", Tolerances(), torch.Generator().manual_seed(0))
    assert len(out["latents"]) == 2
    assert out["latents"][0]["var_mu"] == pytest.approx(1.25)
    assert out["latents"][1]["recon_gain"] == pytest.approx(0.0, abs=1e-7)


def term(kl: torch.Tensor, step: int, schedule: KLSchedule) -> torch.Tensor:
    """The KL term of one configuration (K = 1) at ``step``."""
    sched = KLSchedules.of([schedule], kl.device)
    return kl_term(kl[None], sched.coefficients(step, 1)[0], sched)[0]


def test_kl_schedules():
    kl = torch.tensor([[0.5, 0.01], [0.7, 0.03]])  # batch mean per variable: 0.6, 0.02
    assert term(kl, 0, KLSchedule(lam=2.0)).item() == pytest.approx(2 * 0.62)
    # warm-up (Bowman et al.): lambda rises linearly over warmup_steps
    warm = KLSchedule(lam=1.0, warmup_steps=100)
    assert kl_weight(0, warm) == 0 and kl_weight(50, warm) == 0.5 and kl_weight(500, warm) == 1.0
    # free bits (Kingma et al.): each variable counts at least free_bits nats
    assert term(kl, 0, KLSchedule(free_bits=0.1)).item() == pytest.approx(0.6 + 0.1)
    # capacity (Burgess et al.): gamma * |KL - C|, C = C_max * step / capacity_steps
    cap = KLSchedule(capacity_max=10.0, capacity_steps=100, gamma=2.0)
    assert term(kl, 50, cap).item() == pytest.approx(2.0 * abs(0.62 - 5.0))
    assert term(kl, 1000, cap).item() == pytest.approx(2.0 * abs(0.62 - 10.0))
    assert kl_target(50, cap) == 5.0 and kl_target(50, KLSchedule()) == 0.0
    # K configurations at once: each its own schedule (the packed trials' KL term)
    scheds = [KLSchedule(lam=2.0), KLSchedule(free_bits=0.1), cap, KLSchedule(lam=1.0, warmup_steps=100)]
    both = KLSchedules.of(scheds, kl.device)
    many = kl_term(kl.expand(4, 2, 2), both.coefficients(50, 1)[0], both)
    assert many.tolist() == pytest.approx([term(kl, 50, s).item() for s in scheds])
    assert many.tolist() == pytest.approx([2 * 0.62, 0.7, 2.0 * abs(0.62 - 5.0), 0.5 * 0.62])


def test_reconstruction_errors_sum_over_pixels():
    x = torch.tensor([[[[0.0, 1.0]]]])
    logits = torch.zeros_like(x)
    assert reconstruction_error(logits, x, "bce").item() == pytest.approx(2 * math.log(2))
    assert reconstruction_error(logits, x, "mse").item() == pytest.approx(0.25 + 0.25)
