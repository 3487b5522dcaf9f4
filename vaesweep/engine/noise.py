"""The noise experiment of Sec. 5 (Fig. 6 and 7): degrade one active latent variable by adding
Gaussian noise to its sampled z, watch the KL term finish it off, then remove the noise and
watch whether it comes back.

Phases, one row of metrics per training epoch, each tagged with its ``phase``:

1. ``base``: train the VAE as usual for ``base_epochs``; then pick the variable (the one named,
   else the active variable with the largest reconstruction gain), and freeze the variables
   that are already inactive (var_mu below the threshold): from here on they are zeroed in z
   before the decoder, so the network cannot revive one of them instead (Sec. 5, "we force the
   variables that were already inactive to remain so"); the KL keeps them at N(0, 1).
2. ``noise_rising``: z_i <- z_i + sigma * N(0, 1), sigma growing by ``sigma_step`` after every
   ``epochs_per_step`` epochs ("after each increment of the Gaussian noise we repeat one epoch of
   training"), until the variable's reconstruction gain falls below its (lambda-weighted) KL,
   "at this point we stop augmenting the Gaussian noise" (or sigma reaches ``sigma_max``).
3. ``noise_held``: ``hold_epochs`` more epochs with sigma frozen, to observe the collapse
   (mean_sigma2 -> 1 by eq. (5), var_mu -> 0, gain -> 0).
4. ``recovery``: the noise removed, ``recovery_epochs`` epochs ("sparsity seems to be
   reversible, at some extent").

Outcome columns (NaN until they happen): ``noise_threshold_epoch`` (gain fell below KL),
``noise_collapsed_epoch`` (first noisy epoch with clean gain < ``collapse_gain`` and
mean_sigma2 >= ``collapse_sigma2``: Table 1's inactive rows), ``noise_end_epoch`` (last noisy
epoch), ``noise_revived_epoch`` (first recovery epoch, after a collapse, with clean gain >=
``revive_gain``).

The chosen variable's numbers each epoch (eval split, model in eval mode, the frozen variables
zeroed as in training): ``noise_gain`` = recon error with z_i = 0 minus recon error with
z_i = mu_i + sigma * eta (the variable's contribution as the network receives it, the one the
threshold compares with the KL), ``noise_gain_clean`` the same decoding z_i = mu_i (Sec. 5's
reconstruction gain), ``noise_kl`` (eq. (3)), ``noise_var_mu``, ``noise_mean_sigma2``,
``noise_mean_mu``. Gains and KL are nats per image. The usual collapse summary and ``latents``
(vaesweep.engine.latents, without the experiment's transform) come with every row: the experiment
evaluates every epoch, and the trial's own ``epochs`` is replaced by the phases' lengths.

``run_noise_experiment`` is plain Python; ``noise_trainable`` is the Ray Tune function trainable
(settings under ``config["_noise"]``), checkpointing the trial and the phase state every epoch.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Literal

import torch

from vaesweep.config.trial import TrialConfig
from vaesweep.engine.latents import encode_all, moment_stats
from vaesweep.engine.losses import reconstruction_error
from vaesweep.engine.models import eval_mode
from vaesweep.engine.trial import TrialResult, TrialRun
from vaesweep.experiments.noise import NoiseSettings

Phase = Literal["base", "noise_rising", "noise_held", "recovery", "done"]
PHASES = ("base", "noise_rising", "noise_held", "recovery")


@dataclass
class NoiseState:
    """Where the experiment stands; saved in every checkpoint so a restored trial goes on."""

    phase: Phase = "base"
    phase_epochs: int = 0  # epochs trained in the current phase
    sigma: float = 0.0
    level: int = 0  # noise increments so far
    variable: int | None = None
    frozen: list[int] = field(default_factory=list)
    threshold_epoch: int | None = None
    noise_end_epoch: int | None = None  # last epoch trained with noise
    last_epoch: int | None = None  # the experiment's last epoch, known once the noise stops rising
    collapsed_epoch: int | None = None
    revived_epoch: int | None = None


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


@torch.no_grad()
def variable_metrics(
    model, x: torch.Tensor, i: int, keep: torch.Tensor, sigma: float, recon_kind: str, seed: int, batch: int = 1000
) -> dict[str, float]:
    """Sec. 5: the chosen variable's gains (with and without the noise), KL and moments; one host copy."""
    with eval_mode(model):
        mu, logvar = encode_all(model, x)
        moments = moment_stats(mu[:, i : i + 1], logvar[:, i : i + 1])
        z = mu * keep  # decode the means, frozen variables zeroed
        off = z.clone()
        off[:, i] = 0  # the variable zeroed out
        eta = torch.randn(len(x), generator=torch.Generator(x.device).manual_seed(seed), device=x.device, dtype=z.dtype)
        noisy = z.clone()
        noisy[:, i] += sigma * eta  # the variable as training sees it
        err = torch.stack(
            [
                torch.cat(
                    [
                        reconstruction_error(model.decode(c[s : s + batch]), x[s : s + batch], recon_kind)
                        for s in range(0, len(x), batch)
                    ]
                ).mean()
                for c in (off, z, noisy)
            ]
        )
    values = (
        torch.stack(
            [
                err[0] - err[2],
                err[0] - err[1],
                moments["kl"][0],
                moments["var_mu"][0],
                moments["mean_sigma2"][0],
                moments["mean_mu"][0],
            ]
        )
        .double()
        .cpu()
        .tolist()
    )
    names = ("noise_gain", "noise_gain_clean", "noise_kl", "noise_var_mu", "noise_mean_sigma2", "noise_mean_mu")
    return dict(zip(names, values))


class NoiseExperiment:
    """One trial of the experiment: a TrialRun plus the phase state. ``epochs()`` yields rows (a
    vaesweep.engine.run.Run)."""

    packed, k = False, 1

    def __init__(self, config: TrialConfig | dict, settings: NoiseSettings | dict):
        self.settings = settings if isinstance(settings, NoiseSettings) else NoiseSettings(**settings)
        cfg = config if isinstance(config, TrialConfig) else TrialConfig(**config)
        self.settings.check_latent_dim(cfg.latent_dim)
        # every epoch evaluated; the trial's own epochs replaced by the experiment's upper bound
        self.run = TrialRun(cfg.model_copy(update={"epochs": self.settings.max_epochs, "eval_every": 1}))
        self.state = NoiseState(variable=self.settings.variable)
        self.inactive_below = self.settings.inactive_below or cfg.active_threshold

    # --- the latent transform of each phase (device tensors only: no host sync in the step) -------
    def transform(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        st, run = self.state, self.run
        if st.phase == "base":
            return None
        keep = self.keep_mask()
        if st.sigma == 0:
            return lambda z: z * keep
        scale = torch.zeros(run.cfg.latent_dim, device=run.device)
        scale[st.variable] = st.sigma
        gen = run.gen

        def add_noise(z: torch.Tensor) -> torch.Tensor:  # Sec. 5: z_i + sigma * N(0, 1)
            eta = torch.randn(z.shape[0], 1, generator=gen, device=z.device, dtype=z.dtype)
            return z * keep + scale * eta

        return add_noise

    def keep_mask(self) -> torch.Tensor:
        """(L,) 1 for the variables the decoder sees, 0 for the frozen ones."""
        keep = torch.ones(self.run.cfg.latent_dim, device=self.run.device)
        keep[self.state.frozen] = 0
        return keep

    # --- one epoch ------------------------------------------------------------------------------
    @property
    def finished(self) -> bool:
        """The phases are done."""
        return self.state.phase == "done"

    @property
    def epoch(self) -> int:
        return self.run.epoch

    def epochs(self):
        while not self.finished:
            yield self.run_epoch()

    def run_epoch(self) -> dict:
        st = self.state
        if st.phase == "noise_rising" and st.phase_epochs % self.settings.epochs_per_step == 0:
            st.level += 1
            st.sigma = round(min(st.level * self.settings.sigma_step, self.settings.sigma_max), 10)
        phase, sigma = st.phase, st.sigma
        metrics = self.run.run_epoch(self.transform())
        st.phase_epochs += 1
        if phase == "base" and st.phase_epochs >= self.settings.base_epochs:
            self._choose_variable()
        row = {"phase": phase, "noise_sigma": sigma}
        if st.variable is not None:
            row.update(
                variable_metrics(
                    self.run.model,
                    self.run.x_eval,
                    st.variable,
                    self.keep_mask(),
                    sigma,
                    self.run.cfg.recon_loss,
                    self.run.cfg.seed + 2,
                )
            )
            self._advance(phase, metrics["epoch"], row)
        row.update(self._outcome())
        metrics.update(row)
        self.run.history[-1].update(row)
        return metrics

    def _choose_variable(self) -> None:
        """End of the base phase: the variable to degrade and the variables to keep inactive."""
        st = self.state
        latents = self.run.evaluate(with_gain=True)["latents"]
        active = [r for r in latents if r["var_mu"] >= self.inactive_below]
        if self.settings.variable is not None:
            st.variable = self.settings.variable
        elif active:
            st.variable = max(active, key=lambda r: r["recon_gain"])["latent"]
        else:
            raise ValueError(
                f"noise: no active latent variable after {self.settings.base_epochs} base epochs "
                f"(none has var_mu >= {self.inactive_below}); raise noise.base_epochs or name "
                "noise.variable"
            )
        if self.settings.freeze_inactive:
            st.frozen = [
                r["latent"] for r in latents if r["var_mu"] < self.inactive_below and r["latent"] != st.variable
            ]
        self._enter("noise_rising")

    def _advance(self, phase: Phase, epoch: int, row: dict) -> None:
        """Sec. 5: the phase transitions, decided on the numbers of the chosen variable after an
        epoch trained in ``phase``. Collapsed: gain ~ 0 and mean_sigma2 ~ 1 (Table 1's inactive
        rows); revived: the gain back above ``revive_gain`` once the noise is gone."""
        st, s = self.state, self.settings
        if phase == "base":
            return
        collapsed = row["noise_gain_clean"] < s.collapse_gain and row["noise_mean_sigma2"] >= s.collapse_sigma2
        if phase in ("noise_rising", "noise_held") and collapsed and st.collapsed_epoch is None:
            st.collapsed_epoch = epoch
        if (
            phase == "recovery"
            and st.collapsed_epoch is not None
            and st.revived_epoch is None
            and row["noise_gain_clean"] >= s.revive_gain
        ):
            st.revived_epoch = epoch
        if phase == "noise_rising":
            below = row["noise_gain"] < self.run.cfg.lam * row["noise_kl"]  # the gain no longer pays the KL
            top = st.sigma >= s.sigma_max and st.phase_epochs % s.epochs_per_step == 0
            if below:
                st.threshold_epoch = epoch
            if below or top:
                self._enter("noise_held")
        if phase == "noise_rising" and st.phase == "noise_held":
            st.last_epoch = epoch + s.hold_epochs + s.recovery_epochs
            self._plan_last_epoch()
        if st.phase == "noise_held" and st.phase_epochs >= s.hold_epochs:
            st.noise_end_epoch = epoch
            self._enter("recovery")
        if st.phase == "recovery" and st.phase_epochs >= s.recovery_epochs:
            self._enter("done")

    def _plan_last_epoch(self) -> None:
        """Tell the TrialRun where the experiment ends, so its final epoch gets the full evaluation."""
        if self.state.last_epoch is not None:
            self.run.cfg = self.run.cfg.model_copy(update={"epochs": self.state.last_epoch})

    def _enter(self, phase: Phase) -> None:
        st = self.state
        st.phase, st.phase_epochs = phase, 0
        if phase == "recovery":
            st.sigma = 0.0

    def _outcome(self) -> dict:
        st = self.state
        return {
            "noise_variable": _nan(st.variable),
            "noise_n_frozen": len(st.frozen),
            "noise_threshold_epoch": _nan(st.threshold_epoch),
            "noise_end_epoch": _nan(st.noise_end_epoch),
            "noise_collapsed_epoch": _nan(st.collapsed_epoch),
            "noise_revived_epoch": _nan(st.revived_epoch),
        }

    # --- results and checkpoints -------------------------------------------------------------------
    def result(self) -> TrialResult:
        res = self.run.result()
        res.summary = {**res.summary, **self._outcome()}
        return res

    def state_dict(self) -> dict:
        return {**self.run.state_dict(), "noise": asdict(self.state)}

    def load_state_dict(self, state: dict) -> None:
        self.run.load_state_dict(state)
        self.state = NoiseState(**state["noise"])
        self._plan_last_epoch()

    def state_dicts(self) -> list[dict]:
        return [self.state_dict()]

    def load_state_dicts(self, states: list[dict]) -> None:
        self.load_state_dict(*states)

    def final_metrics(self) -> dict | None:
        return self.run.final_metrics()  # its history rows carry the phase and noise_* columns


def run_noise_experiment(
    config: TrialConfig | dict, settings: NoiseSettings | dict, report: Callable[[dict], None] | None = None
) -> TrialResult:
    """Run the Sec. 5 experiment; ``report(metrics)`` after every epoch (with ``phase`` and the
    ``noise_*`` columns); returns the final TrialResult, its history one row per epoch."""
    exp = NoiseExperiment(config, settings)
    for metrics in exp.epochs():
        if report is not None:
            report(metrics)
    return exp.result()
