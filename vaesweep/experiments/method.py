"""``experiment: method``: the paper's Sec. 7 methodology in one study (vaesweep/study/method.py drives it).

Sec. 7: "First of all, we must correctly balance the KL component, ensuring it is properly working [...]
Then, we progressively augment the dimension of the latent space to attain sparsity. If the resulting
network does not give satisfactory generative results, we should likely switch to more sophisticated
architectures [...]. Finally, if the reconstruction error is low but generation is bad, it is a clear
indication of a mismatch between the aggregate posterior Q(z) and the prior P(z); in this case, a simple
two-stage approach as described in [7] might suffice." Per fixed setting of the spec (its grid fields,
e.g. architecture and data set, and seed), in ordinary trials:

  1. lambda*: the minimal lambda whose Sec. 4 laws hold, read from settled trials only, by the constrained
     Optuna search (vaesweep/study/searcher.py) at latent dimension ``search_latent_dim``;
  2. capacity: at lambda*, the latent dimension doubled from ``start_latent_dim``, then bisected between
     the last dimension whose active variables follow it and the first where they do not (``grow_latent``):
     the onset of sparsity and the number of active variables there;
  3. the FID-proxy of reconstructions, prior samples and the two-stage generator at that point;
  4. the advice (``advise``), as data and as one sentence.

This module is torch- and Ray-free: the settings, the spec check, and the pure decisions of phases 2 and 4.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vaesweep.experiments.kind import Kind

CHOSEN = ("lam", "latent_dim", "epochs", "fid", "two_stage")  # trial fields each phase sets itself


class MethodSettings(BaseModel):
    """The method's budget and thresholds (written under ``method: {...}`` in the spec)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    lam_range: tuple[float, float] = Field(
        (0.25, 4.0),
        description="phase 1: lambda searched in [low, high] "
        "(log scale), starting at high, where the KL term surely works",
    )
    search_trials: int = Field(6, ge=1, description="phase 1: Optuna trials per setting")
    search_latent_dim: int = Field(16, ge=1, description="phase 1: the latent dimension of the search (the paper's 16)")
    start_latent_dim: int = Field(2, ge=1, description="phase 2: the first latent dimension tried")
    max_latent_dim: int = Field(64, ge=1, description="phase 2: doubling stops here")
    follow_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="phase 2: the active variables follow the latent "
        "dimension d while n_active >= follow_fraction * d (1: none inactive)",
    )
    resolution: int = Field(1, ge=1, description="phase 2: bisection stops when the bracket is this narrow")
    epochs: int = Field(
        160,
        ge=1,
        description="epochs of every trial (mnist5k's dense collapse settles from "
        "~5,000 minibatches: ~160 epochs of 32)",
    )
    generation_fid: float = Field(
        50.0, gt=0, description="phase 4: generation is satisfactory when its FID-proxy is at most this"
    )
    reconstruction_fid: float = Field(
        50.0, gt=0, description="phase 4: reconstruction is good when its FID-proxy is at most this"
    )

    @model_validator(mode="after")
    def _ranges(self) -> MethodSettings:
        low, high = self.lam_range
        if not 0 < low < high:
            raise ValueError(f"lam_range [{low}, {high}]: give 0 < low < high, e.g. [0.25, 4.0]")
        if self.start_latent_dim > self.max_latent_dim:
            raise ValueError(
                f"start_latent_dim {self.start_latent_dim} is above max_latent_dim "
                f"{self.max_latent_dim}; lower it or raise max_latent_dim"
            )
        return self


def check(spec: Any) -> None:  # a vaesweep.config.spec.StudySpec (named, not imported: config.spec reads this registry)
    """The method picks lambda, the latent dimension, epochs and what is scored: the spec fixes the rest, in
    grids (one method per setting), with no search or scheduler of its own."""
    for where, fields in (("base", spec.base), ("space", spec.space)):
        if chosen := [f for f in CHOSEN if f in fields]:
            raise ValueError(
                f"{where}.{chosen[0]}: chosen by experiment: method; set method.lam_range, "
                "method.epochs, method.start_latent_dim instead, or remove it"
            )
    if spec.search.type != "grid":
        raise ValueError("search: experiment: method runs its own Optuna search (method.search_trials); remove it")
    if spec.scheduler is not None:
        raise ValueError("scheduler: early stopping would cut the method's trials before they settle; remove it")


# --- phase 2: the latent dimension grown until the active variables stop following it ------------------------


@dataclass(frozen=True)
class Capacity:
    """Where phase 2 stands: the next latent dimension to train, or (``next_dim`` None) the answer."""

    next_dim: int | None
    onset: int | None = None  # smallest latent dimension found whose active variables fell behind it
    following: int | None = None  # largest latent dimension below ``onset`` whose variables followed it
    n_active: int | None = None  # active variables at ``onset`` (at the largest tried if sparsity never came)


def grow_latent(
    n_active: dict[int, int], start: int, max_dim: int, follow_fraction: float = 1.0, resolution: int = 1
) -> Capacity:
    """Phase 2's decision from the results so far (latent dimension -> active variables): double from ``start``
    while the active variables follow (n_active >= follow_fraction * d), up to ``max_dim``; then bisect between
    the last dimension that followed and the first that did not until they are ``resolution`` apart."""

    def follows(d: int) -> bool:
        return n_active[d] >= follow_fraction * d

    d, below = start, None
    while True:  # doubling
        if d not in n_active:
            return Capacity(next_dim=d)
        if not follows(d):
            break
        if d >= max_dim:  # every dimension tried followed: no sparsity up to max_dim
            return Capacity(next_dim=None, following=d, n_active=n_active[d])
        below, d = d, min(2 * d, max_dim)
    low, high = below, d
    while low is not None and high - low > resolution:  # bisection
        mid = (low + high) // 2
        if mid not in n_active:
            return Capacity(next_dim=mid)
        low, high = (mid, high) if follows(mid) else (low, mid)
    return Capacity(next_dim=None, onset=high, following=low, n_active=n_active[high])


# --- phase 4: the advice of Sec. 7, steps 3-4 ------------------------------------------------------------------

VERDICTS = {
    "no_lambda": "no lambda in the range passed the Sec. 4 laws on a settled trial",
    "incomplete": "phase 3 (the FID-proxy trial) has not finished",
    "satisfactory": "generation is satisfactory: keep this model",
    "two_stage": "reconstruction good, generation bad: aggregate posterior mismatch, a two-stage VAE (Sec. 7 step 4)",
    "richer_architecture": "generation unsatisfactory: a richer architecture (Sec. 7 step 3)",
}


@dataclass(frozen=True)
class Advice:
    verdict: str  # a key of VERDICTS
    sentence: str  # e.g. "dense: lambda* = 1; sparsity from latent 16 (6 active); reconstructions 37, ..."


def advise(
    label: str,
    settings: MethodSettings,
    lam_star: float,
    capacity: Capacity | None = None,
    fid_recon: float = math.nan,
    fid_prior: float = math.nan,
    fid_two_stage: float = math.nan,
) -> Advice:
    """Sec. 7 steps 3-4 with explicit thresholds: generation (prior samples) is satisfactory when its FID-proxy is at
    most ``generation_fid``; else, when reconstructions score at most ``reconstruction_fid``, the gap is the
    aggregate posterior's mismatch with the prior and the two-stage VAE is the remedy (enough if its samples reach
    ``generation_fid``); else (reconstruction bad too, or the second stage not enough) a richer architecture."""
    if math.isnan(lam_star):
        low, high = settings.lam_range
        return Advice(
            "no_lambda",
            f"{label}: no lambda in [{low:g}, {high:g}] passed the Sec. 4 laws on a settled "
            f"trial: raise method.epochs (trials must settle) or the top of method.lam_range",
        )
    parts = [f"{label}: lambda* = {lam_star:.3g}"]
    if capacity is not None and capacity.onset is not None:
        parts.append(f"sparsity from latent {capacity.onset} ({capacity.n_active} active)")
    elif capacity is not None:
        parts.append(f"no sparsity up to latent {capacity.following} ({capacity.n_active} active)")
    if math.isnan(fid_prior):
        return Advice("incomplete", "; ".join(parts) + "; no FID-proxy score yet (phase 3 not finished)")
    scores = f"reconstructions {fid_recon:.0f}, prior samples {fid_prior:.0f}"
    if fid_prior <= settings.generation_fid:
        return Advice("satisfactory", "; ".join(parts) + f"; {scores}: generation satisfactory")
    if fid_recon <= settings.reconstruction_fid:
        head = "; ".join(parts) + f"; {scores}: aggregate posterior mismatch — the second stage brings generation "
        if fid_two_stage <= settings.generation_fid:
            return Advice("two_stage", head + f"to {fid_two_stage:.0f}")
        return Advice("richer_architecture", head + f"only to {fid_two_stage:.0f}: try a richer architecture")
    return Advice(
        "richer_architecture",
        "; ".join(parts) + f"; {scores}: generation and reconstruction unsatisfactory — try a richer architecture",
    )


KIND = Kind(
    name="method",
    settings=MethodSettings,
    check=check,
    trainable="vaesweep.study.trainables:trainable",
    driver="vaesweep.study.method:run_method",
    sections=("analysis.method:section",),  # Sec. 7's answer, at the top of the report
)
