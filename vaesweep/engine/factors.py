"""Which latent variable holds which known factor (generated data: vaesweep/engine/sprites.py, issue 28).

On data made from k independent factors, Dai & Wipf [7] (the paper's Sec. 6) predict k active variables.
Whether those k variables *are* the k factors is measured on the eval split, at every evaluation:

- ``factor_rho_<factor>`` (per variable i): Spearman's rank correlation of mu_i(X) with the factor's
  value; rank-based, so any monotone encoding of a factor counts fully. |rho| near 1: the variable
  holds that factor alone; inactive variables (Var[mu_i] ~ 1e-4, noise) sit near 0.
- ``factor_r2_<factor>`` (per trial): R^2 of the least-squares fit of the factor on the active
  variables' means (with an intercept): the share of the factor's variance the active code holds
  linearly, whether or not one variable holds it alone (a rotated code still scores ~1). 0 without an
  active variable.
"""

from __future__ import annotations

import torch

from vaesweep.config.metrics import FACTOR_R2 as R2
from vaesweep.config.metrics import FACTOR_RHO as RHO


def _ranks(a: torch.Tensor) -> torch.Tensor:
    """Ranks 0..N-1 down each column (ties broken by position: continuous values have none)."""
    return a.argsort(0).argsort(0).to(torch.float64)


def _standardise(a: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(0)
    return a / a.norm(dim=0).clamp_min(1e-12)


def rank_correlations(mu: torch.Tensor, factors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Per factor, Spearman's rho of each variable's mean with it: {factor_rho_<name>: (L,)}."""
    r_mu = _standardise(_ranks(mu))
    return {RHO + name: r_mu.T @ _standardise(_ranks(value[:, None]))[:, 0] for name, value in factors.items()}


def explained(mu: torch.Tensor, factors: dict[str, torch.Tensor], active: torch.Tensor) -> dict[str, float]:
    """Per factor, R^2 of its least-squares fit on the active variables' means: {factor_r2_<name>: float}."""
    x = mu[:, active].to(torch.float64)
    x = torch.cat([x - x.mean(0), torch.ones(len(x), 1, dtype=x.dtype, device=x.device)], 1)
    out = {}
    for name, value in factors.items():
        y = value.to(torch.float64)
        fit = x @ torch.linalg.lstsq(x, y[:, None]).solution[:, 0] if active.any() else y.mean().expand_as(y)
        out[R2 + name] = float(1 - ((y - fit) ** 2).sum() / ((y - y.mean()) ** 2).sum())
    return out
