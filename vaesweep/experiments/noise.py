"""``experiment: noise``: the Sec. 5 noise experiment (vaesweep/engine/noise.py runs it, Fig. 7 draws it).

Each trial trains one VAE for ``noise.base_epochs``, then degrades one active variable with growing
Gaussian noise until its reconstruction gain falls below its KL, holds the noise, and removes it
(see studies/noise.yaml).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, model_validator

from vaesweep.experiments.kind import Kind, StudySpec


class NoiseSettings(BaseModel):
    """The schedule of the Sec. 5 experiment (the trial's own ``epochs`` is not used)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    base_epochs: int = Field(
        150, ge=1, description="ordinary training before the noise (mnist5k's active set settles in about 150 epochs)"
    )
    variable: int | None = Field(
        None,
        ge=0,
        description="latent variable to degrade (default: the active one with the largest reconstruction gain)",
    )
    sigma_step: float = Field(0.1, gt=0, description="noise std added at each increment")
    sigma_max: float = Field(8.0, gt=0, description="the noise std never goes above this")
    epochs_per_step: int = Field(1, ge=1, description="training epochs at each noise level")
    hold_epochs: int = Field(40, ge=0, description="epochs with the noise frozen after the threshold")
    recovery_epochs: int = Field(60, ge=0, description="epochs after the noise is removed")
    freeze_inactive: bool = Field(True, description="keep the variables inactive after the base phase zeroed (Sec. 5)")
    inactive_below: float | None = Field(
        None, gt=0, description="var_mu under which a variable is inactive (default: the trial's active_threshold)"
    )
    collapse_gain: float = Field(
        0.1,
        gt=0,
        description="collapsed: clean reconstruction gain below this "
        "(nats per image) with mean_sigma2 >= collapse_sigma2",
    )
    collapse_sigma2: float = Field(
        0.9, gt=0, le=1, description="collapsed: mean_sigma2 at least this, with the gain below collapse_gain"
    )
    revive_gain: float = Field(
        1.0,
        gt=0,
        description="revived: clean reconstruction gain back above this (nats per image) after the noise is removed",
    )

    @model_validator(mode="after")
    def _step_fits(self) -> NoiseSettings:
        if self.sigma_step > self.sigma_max:
            raise ValueError(
                f"sigma_step {self.sigma_step} is above sigma_max {self.sigma_max}; lower sigma_step or raise sigma_max"
            )
        return self

    @property
    def n_steps(self) -> int:
        """Noise levels at most: sigma_step, 2 sigma_step, ..., up to sigma_max."""
        return max(1, math.ceil(self.sigma_max / self.sigma_step - 1e-9))

    @property
    def max_epochs(self) -> int:
        return self.base_epochs + self.n_steps * self.epochs_per_step + self.hold_epochs + self.recovery_epochs

    def check_latent_dim(self, latent_dim: int) -> None:
        if self.variable is not None and self.variable >= latent_dim:
            raise ValueError(
                f"variable {self.variable} does not exist with latent_dim {latent_dim}; "
                f"give 0..{latent_dim - 1} or leave it out"
            )


def check(spec: StudySpec) -> None:
    """The phases set the epochs (no ``epochs``, no scheduler to cut them); the variable must exist."""
    if spec.scheduler is not None:
        raise ValueError("scheduler: early stopping would cut the noise experiment's phases; remove it")
    if "settled" in spec.trial_values("stop_when"):
        raise ValueError(
            "stop: the noise experiment runs its phases to their end, not to a settled answer; remove stop"
        )
    if "epochs" in spec.base or "epochs" in spec.space:
        where = "base" if "epochs" in spec.base else "space"
        raise ValueError(
            f"{where}.epochs: not used by experiment: noise; set noise.base_epochs, "
            "noise.hold_epochs and noise.recovery_epochs instead"
        )
    try:
        spec.kind_settings.check_latent_dim(min(spec.trial_values("latent_dim")))
    except ValueError as err:
        raise ValueError(f"noise.variable: {err}") from None


KIND = Kind(
    name="noise",
    settings=NoiseSettings,
    check=check,
    trainable="vaesweep.study.trainables:noise_trainable",
    sections=("analysis.noise:section",),  # Fig. 7
)
NOISE_KEY = KIND.key  # "_noise": where a trial's config carries the settings
