"""What the code says about the data, and how likely the data is: the two numbers the posterior-collapse
literature tabulates beside the KL and the active units (He et al. 2019, "Lagging inference networks").

- ``mutual_information``: I_q(x; z) = E_x[KL(q(z|x) || q(z))], the aggregate posterior
  q(z) = 1/N sum_j q(z|x_j) estimated over N eval codes (Hoffman & Johnson 2016; He et al.'s ``calc_mi``):
  one z_i ~ q(z|x_i) per image and

      I_hat = 1/N sum_i [log q(z_i|x_i) - log(1/N sum_j q(z_i|x_j))],

  jointly (``mi``) and per variable, with the 1-D densities of z_d (``mi_i``; q(z|x) is a diagonal Gaussian,
  so the joint log-density is the sum of the per-variable ones). He et al. use the closed-form entropy for
  E[log q(z|x)]; here the same sample z_i serves both terms (the same estimator in expectation, a control
  variate): an encoder that ignores x gives exactly 0, and since the sum over j holds j = i, every term is at
  most log N. So I_hat <= log N: a VAE whose codes are all told apart on N images (a good MNIST VAE: its KL
  of ~25 nats bounds the true MI, far above log 1,000 = 6.9) reads ~log N jointly; the per-variable numbers
  (a few nats for an active variable, ~0 for an inactive one) stay far from it.
- ``importance_weighted_nll``: -log p(x) ~ -log 1/K sum_k p(x|z_k) p(z_k) / q(z_k|x), z_k ~ q(z|x)
  (Burda et al. 2015), an upper bound of -log p(x) that tightens as K grows; K = 1 is -ELBO. -log p(x|z)
  is the reconstruction error of eq. (6) (vaesweep/engine/losses.py), so it is comparable with the ELBO.
"""

from __future__ import annotations

import math

import torch

from vaesweep.engine.losses import reconstruction_error
from vaesweep.engine.models import eval_mode

LOG_2PI = math.log(2 * math.pi)


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """log N(z; mu, exp(logvar)) per coordinate (broadcasting)."""
    return -0.5 * ((z - mu).pow(2) * torch.exp(-logvar) + logvar + LOG_2PI)


@torch.no_grad()
def mutual_information(
    mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, per_variable: bool = True, entries_per_chunk: int = 1 << 22
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(I_hat(x; z) as a 0-d tensor, I_hat(x; z_d) per variable (L,) or None) from encoder outputs and one code
    per image, each (N, L).

    Jointly, sum_d (z_id - mu_jd)^2 / sigma_jd^2 expands into two (N x L) @ (L x N) products, in float64 (the
    expansion cancels terms of size z^2 / sigma^2); the terms j = i are computed directly. Per variable the
    N x N x L log-densities log q(z_id | x_jd) have no product form: ``per_variable`` costs N^2 L exponentials.
    Both go through in chunks of rows of ~``entries_per_chunk`` entries (N = 10,000 and L = 64 would be 6.4e9)."""
    n, latent = mu.shape
    log_n = math.log(n)
    mu64, lv64, z64 = mu.double(), logvar.double(), z.double()
    w = torch.exp(-lv64)  # 1 / sigma^2, (N, L)
    const = -0.5 * (lv64.sum(1) + latent * LOG_2PI)  # (N,)
    mu_w, mu2_w = (mu64 * w).T.contiguous(), (mu64.pow(2) * w).sum(1)
    own = _log_normal(z64, mu64, lv64)  # (N, L): log q(z_id | x_id)
    joint = mu64.new_zeros(())
    rows = max(1, entries_per_chunk // n)
    for s in range(0, n, rows):
        zc = z64[s : s + rows]
        quad = zc.pow(2) @ w.T - 2 * (zc @ mu_w) + mu2_w  # (c, N): sum_d (z_id - mu_jd)^2 / sigma_jd^2
        log_q = const - 0.5 * quad
        idx = torch.arange(len(zc), device=z.device)
        log_q[idx, s + idx] = own[s : s + rows].sum(1)
        joint += (own[s : s + rows].sum(1) - torch.logsumexp(log_q, 1)).sum()
    if not per_variable:
        return (joint / n + log_n).to(mu.dtype), None
    per_var = mu.new_zeros(latent)
    rows = max(1, entries_per_chunk // max(1, n * latent))
    for s in range(0, n, rows):
        log_q = _log_normal(z[s : s + rows, None, :], mu[None], logvar[None])  # (c, N, L)
        per_var += (own[s : s + rows].to(mu.dtype) - torch.logsumexp(log_q, 1)).sum(0)
    return (joint / n + log_n).to(mu.dtype), per_var / n + log_n


@torch.no_grad()
def importance_weighted_nll(
    model,
    x: torch.Tensor,
    recon_kind: str,
    samples: int,
    generator: torch.Generator,
    codes_per_pass: int = 1000,
    batch_size: int = 1000,
) -> float:
    """Burda et al.'s bound on -log p(x), averaged over the images ``x``, with ``samples`` codes per image
    from q(z|x) drawn with ``generator``; the model in eval mode. ``codes_per_pass`` bounds the decoder's
    batch (images x samples)."""
    if samples < 1:
        raise ValueError(f"iw_samples must be at least 1, got {samples}")
    total = 0.0
    per_pass = max(1, codes_per_pass // samples)
    with eval_mode(model):
        for s in range(0, len(x), batch_size):
            xb = x[s : s + batch_size]
            mu, logvar = model.encode(xb)
            for t in range(0, len(xb), per_pass):
                m, lv, xi = mu[t : t + per_pass], logvar[t : t + per_pass], xb[t : t + per_pass]
                eps = torch.randn((samples, *m.shape), generator=generator, device=m.device, dtype=m.dtype)
                z = m + torch.exp(0.5 * lv) * eps  # (K, B, L)
                target = xi.expand(samples, *xi.shape).reshape(-1, *xi.shape[1:])
                recon = reconstruction_error(model.decode(z.reshape(-1, z.shape[-1])), target, recon_kind)
                log_w = (
                    -recon.view(samples, -1)
                    + _log_normal(z, torch.zeros_like(m), torch.zeros_like(lv)).sum(-1)  # log p(z)
                    - _log_normal(z, m, lv).sum(-1)  # log q(z|x)
                )
                total += float((math.log(samples) - torch.logsumexp(log_w, 0)).sum())
    return total / len(x)
