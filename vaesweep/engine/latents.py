"""Collapse metrics: which latent variables are in use, and whether the KL term works.

Per latent variable i, over the eval split with the model in eval mode:

- ``mean_mu`` = E_X[mu_i(X)]           (Sec. 4: first moment of Q(z), should be ~0)
- ``var_mu`` = Var_X[mu_i(X)]          (Table 1, "variance")
- ``mean_sigma2`` = E_X[sigma_i^2(X)]  (Table 1, "mean(sigma^2(X))")
- ``law`` = var_mu + mean_sigma2       (Sec. 4 variance law: ~1 when the KL term works)
- ``kl`` = E_X[KL_i]                   (eq. (3), per variable)
- ``recon_gain`` = recon error with z_i = 0 minus recon error with all variables, decoding
  the means (Sec. 5 "reconstruction gain")
- ``mi_i`` = I_q(x; z_i)                 (the variable's mutual information with the image, on the first
  ``mi_images`` eval images: vaesweep/engine/information.py, He et al. 2019; at most log N; with the
  reconstruction gains, NaN on the evaluations without them)
- ``active`` = var_mu > threshold      (Burda et al.'s active-unit criterion, default 0.01)
- ``factor_rho_<factor>``: on generated data with known factors (sprites), the variable's rank
  correlation with each factor, and per trial ``factor_r2_<factor>`` (vaesweep/engine/factors.py)

and per trial ``mi`` = I_q(x; z) over all variables jointly, with its ceiling ``mi_log_n`` = log N.

Inactive variables (Table 1, red rows): var_mu ~ 0 and mean_sigma2 ~ 1.
"""

from __future__ import annotations

import math

import torch

from vaesweep.config.trial import Tolerances
from vaesweep.engine.factors import explained, rank_correlations
from vaesweep.engine.information import mutual_information
from vaesweep.engine.losses import kl_per_variable, reconstruction_error
from vaesweep.engine.models import eval_mode, reparameterize

PER_VARIABLE = ("mean_mu", "var_mu", "mean_sigma2", "law", "kl", "recon_gain", "mi_i", "active")


@torch.no_grad()
def encode_all(model, x: torch.Tensor, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(X) and log sigma^2(X) for every image of ``x``, shape (N, L) each."""
    parts = [model.encode(x[i : i + batch_size]) for i in range(0, len(x), batch_size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def moment_stats(mu: torch.Tensor, logvar: torch.Tensor) -> dict[str, torch.Tensor]:
    """The per-variable moments of Table 1 and Sec. 4 from encoder outputs (N, L)."""
    var_mu = mu.var(0, unbiased=False)
    mean_sigma2 = logvar.exp().mean(0)
    return {
        "mean_mu": mu.mean(0),
        "var_mu": var_mu,
        "mean_sigma2": mean_sigma2,
        "law": var_mu + mean_sigma2,  # Sec. 4: Var[Q(z)] = E[sigma^2(X)] + Var[mu(X)] ~ 1
        "kl": kl_per_variable(mu, logvar).mean(0),
    }


@torch.no_grad()
def reconstruction_gain(
    model, x: torch.Tensor, mu: torch.Tensor, recon_kind: str, images_per_pass: int = 512
) -> torch.Tensor:
    """Sec. 5: per variable, E[recon error with z_i zeroed] - E[recon error decoding z = mu], (L,).

    All L zeroed copies of a chunk of codes go through the decoder in one batched pass; 512 decoded
    images a pass keep a dense decoder's activations in a CPU's L2 cache (~20 % faster than 2,048).
    """
    n, latent = mu.shape
    keep = 1 - torch.eye(latent + 1, latent, device=mu.device, dtype=mu.dtype)  # row L keeps all
    chunk = max(1, images_per_pass // (latent + 1))
    err = torch.zeros(latent + 1, device=mu.device)
    for s in range(0, n, chunk):
        xb, mb = x[s : s + chunk], mu[s : s + chunk]
        z = (keep[:, None, :] * mb[None]).reshape(-1, latent)  # (L+1)*B codes
        target = xb.expand(latent + 1, *xb.shape).reshape(-1, *xb.shape[1:])
        err += reconstruction_error(model.decode(z), target, recon_kind).view(latent + 1, -1).sum(1)
    err = err / n
    return err[:latent] - err[latent]


@torch.no_grad()
def evaluate(
    model,
    x: torch.Tensor,
    recon_kind: str,
    tol: Tolerances,
    generator: torch.Generator,
    with_gain: bool = True,
    mi_images: int = 1000,
    factors: dict[str, torch.Tensor] | None = None,
) -> dict:
    """All collapse metrics of a model on images ``x``: per-variable tensors and a summary.
    ``generator`` fixes the eval sampling noise; the mutual information uses the first ``mi_images`` images
    and their codes z (0: not measured, NaN), per variable only ``with_gain``. ``factors``: the known factor
    values of the images of ``x`` by name (generated data), for which variable holds which factor."""
    with eval_mode(model):
        mu, logvar = encode_all(model, x)
        per_var = moment_stats(mu, logvar)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
        z = reparameterize(mu, logvar, eps)
        recon = torch.cat(
            [
                reconstruction_error(model.decode(z[s : s + 1000]), x[s : s + 1000], recon_kind)
                for s in range(0, len(x), 1000)
            ]
        ).mean()
        if with_gain:
            per_var["recon_gain"] = reconstruction_gain(model, x, mu, recon_kind)
        else:
            per_var["recon_gain"] = torch.full_like(per_var["kl"], float("nan"))
        mi, mi_n = None, min(mi_images, len(x))
        if mi_n >= 2:  # jointly every time (4-7 % of an evaluation); per variable with the gains (N^2 L exps)
            mi, mi_i = mutual_information(mu[:mi_n], logvar[:mi_n], z[:mi_n], per_variable=with_gain)
            if mi_i is not None:
                per_var["mi_i"] = mi_i
    out = summarize(per_var, recon, tol, mi, mi_n)
    if factors:
        with_factors(out, mu, factors)
    return out


def with_factors(out: dict, mu: torch.Tensor, factors: dict[str, torch.Tensor]) -> None:
    """Add each variable's ``factor_rho_*`` to its row and the trial's ``factor_r2_*`` to the summary."""
    rho = {k: v.cpu().tolist() for k, v in rank_correlations(mu, factors).items()}
    for row in out["latents"]:
        row.update({k: v[row["latent"]] for k, v in rho.items()})
    active = torch.tensor([r["active"] for r in out["latents"]], dtype=torch.bool, device=mu.device)
    out["summary"].update(explained(mu, factors, active))


def summarize(
    per_var: dict[str, torch.Tensor],
    recon: torch.Tensor,
    tol: Tolerances,
    mi: torch.Tensor | None = None,
    mi_n: int = 0,
) -> dict:
    """Per-trial numbers (host floats) from per-variable tensors: one device->host copy. ``mi``: I_q(x; z)
    estimated on ``mi_n`` images (per variable ``per_var["mi_i"]``, NaN when absent)."""
    nan = torch.full_like(per_var["kl"], float("nan"))
    per_var = {**per_var, "mi_i": per_var.get("mi_i", nan)}
    mi = nan if mi is None else mi.expand_as(nan)
    stacked = torch.stack([per_var[k] for k in PER_VARIABLE[:-1]] + [recon.expand_as(nan), mi])
    host = stacked.double().cpu().numpy()
    cols = {k: host[j] for j, k in enumerate(PER_VARIABLE[:-1])}
    recon_value = float(host[-2][0]) if host.shape[1] else float("nan")
    mi_value = float(host[-1][0]) if host.shape[1] else float("nan")
    active = cols["var_mu"] > tol.active_threshold
    residual = abs(cols["law"] - 1.0)
    kl_total = float(cols["kl"].sum())
    law_residual_max = float(residual.max()) if len(residual) else 0.0
    mean_mu_abs_max = float(abs(cols["mean_mu"]).max()) if len(residual) else 0.0
    summary = {
        "n_active": int(active.sum()),
        "n_inactive": int((~active).sum()),
        "law_residual_max": law_residual_max,
        "law_residual_mean": float(residual.mean()) if len(residual) else 0.0,
        "mean_mu_abs_max": mean_mu_abs_max,
        "recon": recon_value,
        "kl": kl_total,
        "elbo": -(recon_value + kl_total),
        # Sec. 4 / 6.1: the KL term "works" when Q(z) has the moments of N(0, I).
        "kl_working": bool(law_residual_max <= tol.law_tol and mean_mu_abs_max <= tol.mu_tol),
        # the same two laws as constraint values, <= 0 when satisfied (for constrained search)
        "law_excess": law_residual_max - tol.law_tol,
        "mu_excess": mean_mu_abs_max - tol.mu_tol,
        # He et al. 2019: I_q(x; z) on the first mi_n eval images; the estimator never exceeds log mi_n
        "mi": mi_value,
        "mi_log_n": math.log(mi_n) if mi_n >= 2 else float("nan"),
    }
    latents = [
        {"latent": i, **{k: float(cols[k][i]) for k in cols}, "active": bool(active[i])} for i in range(len(active))
    ]
    return {"summary": summary, "latents": latents}
