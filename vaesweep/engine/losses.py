"""The VAE objective, eq. (6): reconstruction error + lambda * KL(Q(z|X) || N(0, I)).

The KL term is the closed form of eq. (3), kept per latent variable so the collapse of each
one can be watched. The remedies the paper surveys (Sec. 6.1) are options of the KL term:

- KL warm-up: lambda grows linearly from 0 over ``warmup_steps`` minibatches (Bowman et al. [3]);
- free bits: each variable's batch-mean KL counts at least ``free_bits`` nats (Kingma et al. [15]);
- capacity-controlled beta-VAE: ``gamma * |KL - C|`` with the KL target C (Burgess et al. [5] call it the
  capacity; here "capacity" is the active variables, so the code says KL target) rising linearly to
  ``capacity_max`` over ``capacity_steps`` minibatches.

Plain lambda is beta-VAE's beta (Higgins et al. [14]).
One ``kl_term`` serves one trial and a pack of K (vaesweep/engine/packing.py) alike: the schedules are
(K,) tensors, lambda(step) and C(step) come from ``kl_weight`` and ``kl_target`` only.
The losses return tensors; nothing in a training step synchronises with the host.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vaesweep.config.trial import KLSchedule


def kl_per_variable(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Eq. (3): KL(N(mu, sigma^2) || N(0, 1)) = 1/2 (mu^2 + sigma^2 - log sigma^2 - 1), shape (B, L)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1.0)


def reconstruction_error(logits: torch.Tensor, x: torch.Tensor, kind: str, clip: float = 0.0) -> torch.Tensor:
    """-log P(X|z) per image, summed over pixels, shape (B,).

    ``bce``: Bernoulli decoder; ``mse``: Gaussian decoder, squared distance to sigmoid(logits) (Sec. 2).
    ``clip`` > 0 (bce only): Keras' binary cross-entropy, which clips the probabilities sigmoid(logits) to
    [clip, 1 - clip] with no gradient beyond, i.e. clamps the logits to +-log((1 - clip) / clip).
    """
    if kind == "bce":
        if clip > 0:
            bound = math.log((1 - clip) / clip)
            logits = logits.clamp(-bound, bound)  # clamp's gradient is 0 outside, as tf.clip_by_value's
        err = F.binary_cross_entropy_with_logits(logits, x, reduction="none")
    elif kind == "mse":
        err = (torch.sigmoid(logits) - x).pow(2)
    else:
        raise ValueError(f"unknown recon '{kind}'; use 'bce' or 'mse'")
    return err.flatten(1).sum(1)


def kl_weight(step: int, schedule: KLSchedule) -> float:
    """lambda at minibatch ``step``: linear warm-up from 0, then constant (Bowman et al.)."""
    if schedule.warmup_steps <= 0:
        return schedule.lam
    return schedule.lam * min(1.0, step / schedule.warmup_steps)


def kl_target(step: int, schedule: KLSchedule) -> float:
    """C at minibatch ``step``: linear from 0 to ``capacity_max`` over ``capacity_steps`` (Burgess et al.);
    0 without a KL target."""
    ramp = 1.0 if schedule.capacity_steps <= 0 else min(1.0, step / schedule.capacity_steps)
    return ramp * (schedule.capacity_max or 0.0)


@dataclass(frozen=True)
class KLSchedules:
    """The KL schedules of K configurations as device tensors (K,) for ``kl_term`` (K = 1 for one trial)."""

    schedules: tuple[KLSchedule, ...]
    free_bits: torch.Tensor  # (K,) nats per variable, 0 = off
    targeted: torch.Tensor  # (K,) bool: gamma * |KL - C| instead of lambda * KL
    gamma: torch.Tensor  # (K,)
    any_free_bits: bool
    any_targeted: bool

    @classmethod
    def of(cls, schedules: list[KLSchedule], device: torch.device) -> KLSchedules:
        def per_config(value, dtype=torch.float32):
            return torch.tensor([value(s) for s in schedules], dtype=dtype, device=device)

        return cls(
            tuple(schedules),
            per_config(lambda s: s.free_bits),
            per_config(lambda s: s.capacity_max is not None, torch.bool),
            per_config(lambda s: s.gamma),
            any(s.free_bits > 0 for s in schedules),
            any(s.capacity_max is not None for s in schedules),
        )

    def coefficients(self, first_step: int, n_steps: int) -> torch.Tensor:
        """(n_steps, K, 2): lambda(step) and C(step) of each configuration for steps first_step, ...;
        host arithmetic on step counts, one copy to the device."""
        rows = [
            [(kl_weight(step, s), kl_target(step, s)) for s in self.schedules]
            for step in range(first_step, first_step + n_steps)
        ]
        return torch.tensor(rows, dtype=torch.float32, device=self.gamma.device).view(n_steps, len(self.schedules), 2)


def kl_term(kl: torch.Tensor, coef: torch.Tensor, sched: KLSchedules, mask: torch.Tensor | None = None):
    """The regulariser of eq. (6) added to the batch-mean reconstruction error, for K configurations.

    ``kl`` (K, B, L) per image and variable (eq. (3)); ``coef`` (K, 2) this step's lambda and C
    (``KLSchedules.coefficients``); ``mask`` (K, L) of 0/1 marks the variables that exist (packed
    configurations of a smaller latent dimension), masked ones count nothing. Returns (K,).
    """
    per_var = kl.mean(1)  # E_batch KL_i, (K, L)
    if sched.any_free_bits:  # free bits (Kingma et al.)
        fb = sched.free_bits[:, None]
        per_var = torch.where(fb > 0, per_var.clamp(min=fb), per_var)
    if mask is not None:
        per_var = per_var * mask
    total = per_var.sum(1)
    weight, target = coef[:, 0], coef[:, 1]
    if not sched.any_targeted:
        return weight * total  # lambda, with warm-up
    return torch.where(sched.targeted, sched.gamma * (total - target).abs(), weight * total)  # Burgess et al.


def vae_loss(logits, x, mu, logvar, coef: torch.Tensor, recon_kind: str, sched: KLSchedules, clip: float = 0.0):
    """Eq. (6) for one minibatch of one configuration (``sched`` of K = 1, ``coef`` (1, 2), ``clip`` the bce
    clipping of ``reconstruction_error``): returns (loss, recon (B,), kl (B, L))."""
    recon = reconstruction_error(logits, x, recon_kind, clip)
    kl = kl_per_variable(mu, logvar)
    return recon.mean() + kl_term(kl[None], coef, sched)[0], recon, kl


def packed_loss(
    logits, x, mu, logvar, mask, coef: torch.Tensor, recon_kind: str, sched: KLSchedules, clip: float = 0.0
):
    """Eq. (6) for K configurations at once, each with its own KL term (``kl_term``).

    Shapes: logits / x (K, B, C, H, W), mu / logvar (K, B, L), mask (K, L), ``coef`` (K, 2).
    Returns (loss (K,), recon (K, B), kl (K, B, L)); masked variables' kl is exactly 0.
    """
    k, b = x.shape[:2]
    recon = reconstruction_error(logits.flatten(0, 1), x.flatten(0, 1), recon_kind, clip).view(k, b)
    kl = kl_per_variable(mu, logvar) * mask[:, None]  # eq. (3)
    return recon.mean(1) + kl_term(kl, coef, sched, mask), recon, kl
