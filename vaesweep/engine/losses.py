"""The VAE objective, eq. (6): reconstruction error + lambda * KL(Q(z|X) || N(0, I)).

The KL term is the closed form of eq. (3), kept per latent variable so the collapse of each
one can be watched. The remedies the paper surveys (Sec. 6.1) are options of the KL term:

- KL warm-up: lambda grows linearly from 0 over ``warmup_steps`` minibatches (Bowman et al. [3]);
- free bits: each variable's batch-mean KL counts at least ``free_bits`` nats (Kingma et al. [15]);
- capacity-controlled beta-VAE: ``gamma * |KL - C|`` with C rising linearly to ``capacity_max``
  over ``capacity_steps`` minibatches (Burgess et al. [5]).

Plain lambda is beta-VAE's beta (Higgins et al. [14]).
All functions return tensors; nothing here synchronises with the host.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaesweep.config.trial import KLSchedule


def kl_per_variable(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. (3): KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - log sigma^2 - 1), shape (B, L)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor, kind: str) -> torch.Tensor:
    """-log P(X|z) per image, summed over pixels, shape (B,).

    ``bce``: Bernoulli decoder; ``mse``: Gaussian decoder, squared distance to sigmoid(logits) (Sec. 2).
    """
    if kind == "bce":
        err = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        err = (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"unknown recon '{kind}'; use 'bce' or 'mse'")
    return err.flatten(1).sum(1)


def kl_term(kl: torch.Tensor, step: int, schedule: KLSchedule) -> torch.Tensor:
    """The regulariser added to the batch-mean reconstruction error; ``kl`` is (B, L)."""
    per_var = kl.mean(0)  # E_batch KL_i, shape (L,)
    if schedule.free_bits > 0:
        per_var = per_var.clamp(min=schedule.free_bits)
    total = per_var.sum()
    if schedule.capacity_max is not None:
        ramp = 1.0 if schedule.capacity_steps <= 0 else min(1.0, step / schedule.capacity_steps)
        return schedule.gamma * (total - ramp * schedule.capacity_max).abs()
    return kl_weight(step, schedule) * total


def kl_weight(step: int, schedule: KLSchedule) -> float:
    """lambda at minibatch ``step``: linear warm-up from 0, then constant (Bowman et al.)."""
    if schedule.warmup_steps <= 0:
        return schedule.lam
    return schedule.lam * min(1.0, step / schedule.warmup_steps)


def vae_loss(logits, x, mu, logvar, step: int, recon_kind: str, schedule: KLSchedule):
    """Eq. (6) for one minibatch: returns (loss, recon (B,), kl (B, L))."""
    recon = reconstruction_error(logits, x, recon_kind)
    kl = kl_per_variable(mu, logvar)
    return recon.mean() + kl_term(kl, step, schedule), recon, kl
