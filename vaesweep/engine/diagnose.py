"""Collapse diagnostics for anyone's VAE, from Python, without Ray: the numbers a vaesweep trial reports,
measured on a model vaesweep did not build.

    d = vaesweep.diagnose(model, images)         # model.encode(x) -> (mu, logvar), model.decode(z) -> logits
    d.table                                      # Table 1 per variable: var_mu, mean_sigma2, law, kl, mi_i, ...
    d.summary["n_active"], d.summary["kl_working"], d.summary["mi"]

    tracker = vaesweep.CollapseTracker()         # inside a training loop, one evaluation at a time
    if tracker.observe(step, vaesweep.diagnose(model, x_eval, gains=False))["stop"]: break

``diagnose`` is ``vaesweep.engine.latents.evaluate`` (the one owner of Table 1, the Sec. 4 laws, the
reconstruction gain and the mutual information), plus Burda et al.'s importance-weighted NLL
(vaesweep/engine/information.py) when ``iw_samples`` > 0. ``CollapseTracker`` is the settle rule of
vaesweep/engine/settle.py, the one a trial with ``stop: {when: settled}`` ends on (``SettleTracker.stops``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import pandas as pd
import torch

from vaesweep.config.trial import Tolerances, TrialConfig
from vaesweep.engine.information import importance_weighted_nll
from vaesweep.engine.latents import evaluate
from vaesweep.engine.settle import SettleTracker, active_indices

Encode = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
Decode = Callable[[torch.Tensor], torch.Tensor]
MEANS_EPS = 1e-6  # decoder means are clamped to [eps, 1 - eps] before their logits are taken


def _default(name: str):
    """The default of a TrialConfig field: a trial and ``diagnose`` read the same numbers."""
    return TrialConfig.model_fields[name].default


class VAEAdapter:
    """Any VAE as vaesweep's engine sees one: ``encode(x) -> (mu, logvar)`` and ``decode(z) -> logits``.

    ``model``: a module with ``encode`` and ``decode`` methods, or a pair of callables (encode, decode).
    ``decoder_output``: what decode returns, ``"logits"`` (vaesweep's models) or ``"means"`` in [0, 1] (e.g.
    pytorch/examples' vae, which ends in a sigmoid; turned into logits, clamped to [1e-6, 1 - 1e-6]).
    ``image_shape``: the shape of one image as the data holds it; decode's output is reshaped to it (a decoder
    returning flat (B, 784) rows for (B, 1, 28, 28) images). Evaluation puts a module in eval mode and
    restores its mode after."""

    def __init__(
        self,
        model: torch.nn.Module | tuple[Encode, Decode],
        decoder_output: Literal["logits", "means"] = "logits",
        image_shape: tuple[int, ...] | None = None,
    ):
        if decoder_output not in ("logits", "means"):
            raise ValueError(f"decoder_output: '{decoder_output}' is not known; use 'logits' or 'means'")
        if isinstance(model, tuple | list):
            if len(model) != 2 or not all(callable(f) for f in model):
                raise TypeError("model: give a module with encode and decode, or a pair (encode, decode) of callables")
            self.module, (self._encode, self._decode) = None, model
        elif callable(getattr(model, "encode", None)) and callable(getattr(model, "decode", None)):
            self.module, self._encode, self._decode = model, model.encode, model.decode
        else:
            raise TypeError(
                f"model: a {type(model).__name__} has no encode/decode methods; pass (encode, decode) callables"
            )
        self.decoder_output, self.image_shape = decoder_output, image_shape

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mu, logvar = self._encode(x)
        return mu.flatten(1), logvar.flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self._decode(z)
        if self.image_shape is not None:
            out = out.reshape(len(z), *self.image_shape)
        return torch.logit(out, eps=MEANS_EPS) if self.decoder_output == "means" else out

    # vaesweep.engine.models.eval_mode: a module's train/eval mode, a no-op for plain callables
    @property
    def training(self) -> bool:
        return self.module.training if isinstance(self.module, torch.nn.Module) else False

    def train(self, mode: bool = True) -> VAEAdapter:
        if isinstance(self.module, torch.nn.Module):
            self.module.train(mode)
        return self

    def eval(self) -> VAEAdapter:
        return self.train(False)


@dataclass
class Diagnosis:
    """What ``diagnose`` found: ``summary`` (n_active, n_inactive, law_residual_max, kl_working, mi, mi_log_n,
    recon, kl, elbo, nll_iw when asked for, ...) and ``latents``, one dict per variable (Table 1)."""

    summary: dict
    latents: list[dict] = field(default_factory=list)

    @property
    def table(self) -> pd.DataFrame:
        """Table 1: one row per latent variable (latent, var_mu, mean_sigma2, law, mean_mu, kl, recon_gain,
        mi_i, active)."""
        cols = ["latent", "var_mu", "mean_sigma2", "law", "mean_mu", "kl", "recon_gain", "mi_i", "active"]
        return pd.DataFrame(self.latents, columns=cols)

    @property
    def active(self) -> list[int]:
        return active_indices(self.latents)


@torch.no_grad()
def diagnose(
    model: torch.nn.Module | tuple[Encode, Decode],
    images: torch.Tensor,
    *,
    decoder_output: Literal["logits", "means"] = "logits",
    recon_loss: Literal["bce", "mse"] = "bce",
    gains: bool = True,
    mi_images: int = _default("mi_images"),
    iw_samples: int = 0,
    iw_images: int = _default("iw_images"),
    active_threshold: float = _default("active_threshold"),
    law_tol: float = _default("law_tol"),
    mu_tol: float = _default("mu_tol"),
    seed: int = 0,
) -> Diagnosis:
    """The collapse diagnostics of a VAE on ``images`` (a tensor on the model's device, values in [0, 1], in
    the shape ``encode`` takes): per variable Table 1's Var[mu_i] and E[sigma_i^2], the Sec. 4 law, KL,
    the reconstruction gain (``gains``; L + 1 decoder passes, NaN without), I_q(x; z_i) and whether it is
    active; in summary n_active, the law residual, kl_working (Sec. 4), I_q(x; z) on the first ``mi_images``
    images (at most log N, ``mi_log_n``) and, with ``iw_samples`` = K > 0, Burda et al.'s NLL ``nll_iw`` on the
    first ``iw_images``. ``recon_loss`` is the decoder's likelihood: bce (Bernoulli) or mse (Gaussian), as in
    a trial. ``seed`` fixes the sampling noise: the same numbers every call."""
    x = torch.as_tensor(images)
    vae = VAEAdapter(model, decoder_output, tuple(x.shape[1:]))
    if len(x) < 2:
        raise ValueError(f"images: {len(x)} image(s); the per-variable variances need at least 2")
    device = x.device
    tol = Tolerances(active_threshold, law_tol, mu_tol)
    gen = torch.Generator(device).manual_seed(seed)
    out = evaluate(vae, x, recon_loss, tol, gen, with_gain=gains, mi_images=mi_images)
    summary = dict(out["summary"])
    if iw_samples > 0:
        gen = torch.Generator(device).manual_seed(seed + 1)
        summary["nll_iw"] = importance_weighted_nll(vae, x[:iw_images], recon_loss, iw_samples, gen)
    return Diagnosis(summary, out["latents"])


class CollapseTracker:
    """Has the collapse settled? For any training loop, one evaluation (a ``Diagnosis``) at a time, by the rule
    a trial with ``stop: {when: settled}`` stops on (vaesweep/engine/settle.py): the same set of active
    variables and a still law residual over at least ``patience`` evaluations spanning ``min_steps``
    minibatches, with the same Sec. 4 verdict (kl_working) over them, after ``stop_min_steps`` minibatches.
    The defaults are TrialConfig's (settle_patience, settle_min_steps, settle_law_tol, stop_min_steps)."""

    def __init__(
        self,
        patience: int = _default("settle_patience"),
        min_steps: int = _default("settle_min_steps"),
        law_tol: float = _default("settle_law_tol"),
        stop_min_steps: int = _default("stop_min_steps"),
    ):
        self.rule = SettleTracker(patience, min_steps, law_tol)
        self.stop_min_steps = stop_min_steps
        self.stop = False

    def observe(self, step: int, diagnosis: Diagnosis) -> dict:
        """Add the evaluation at minibatch ``step``; returns settled, settled_step, verdict_steady and stop
        (True: a trial with ``stop: {when: settled}`` would end here)."""
        s = diagnosis.summary
        self.rule.observe(step, diagnosis.active, s["law_residual_max"], s["kl_working"])
        self.stop = self.rule.stops(step, self.stop_min_steps)
        return {**self.rule.status(), "verdict_steady": self.rule.verdict_steady, "stop": self.stop}

    @property
    def settled(self) -> bool:
        return self.rule.settled
