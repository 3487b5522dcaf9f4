"""The trial function: train one VAE, report collapse metrics after every epoch.

Public API, the same numbers for the same seed and device whichever way it is called:
    result = vaesweep.train_vae({"arch": "dense", "latent_dim": 16, "lam": 1.0}, report=print)
    tune.Tuner(vaesweep.trainable, param_space={"lam": tune.grid_search([0.5, 1, 2])}).fit()

``train_vae`` is plain Python; ``trainable`` is the Ray Tune function trainable (Ray's own
``tune.report`` with a checkpoint each epoch, restored from ``tune.get_checkpoint()``).
Both drive a ``TrialRun``, which owns the data, model, optimiser and RNG of one trial.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch

from vaesweep.config.errors import TrainingDiverged
from vaesweep.config.trial import TrialConfig, trial_fields
from vaesweep.engine.data import load_dataset
from vaesweep.engine.latents import evaluate
from vaesweep.engine.losses import kl_weight, vae_loss
from vaesweep.engine.models import build_model, reparameterize
from vaesweep.engine.settle import SettleTracker, active_indices
from vaesweep.engine.fid import trial_scores
from vaesweep.engine.two_stage import fit_two_stage, settings_for, two_stage_scores

LatentTransform = Callable[[torch.Tensor], torch.Tensor]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' asked for but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(name)


@dataclass
class TrialResult:
    """What a finished trial leaves: final summary, per-variable table, history, the model."""
    config: TrialConfig
    summary: dict
    latents: list[dict]
    history: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None
    second_stage: object | None = None  # vaesweep.engine.two_stage.TwoStageVAE (two_stage: true)


class TrialRun:
    """One trial's state. ``epochs()`` trains and yields each epoch's metrics."""
    def __init__(self, config: TrialConfig | dict):
        self.cfg = config if isinstance(config, TrialConfig) else TrialConfig(**config)
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, self.device, cfg.cache_dir)
        self.x_train = data.train[: cfg.max_train]
        self.x_eval = data.eval[: cfg.max_eval]
        self.data = data
        with torch.random.fork_rng(devices=[]):  # weights from the trial seed, global RNG untouched
            torch.manual_seed(cfg.seed)
            self.model = build_model(cfg.arch, data.shape, cfg.latent_dim, cfg.hidden, cfg.conv_width)
        self.model.to(self.device)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.history: list[dict] = []
        self.last_eval: dict | None = None
        self.settle = SettleTracker.for_config(cfg)  # has the collapse settled? (vaesweep/engine/settle.py)
        self._fid = None  # (FidScorer, TrainedFeatureNet), built on the first FID epoch
        self.second_stage = None  # vaesweep.engine.two_stage.TwoStageVAE, fitted at the end when two_stage is on

    # --- training -------------------------------------------------------------------------
    def train_epoch(self, transform: LatentTransform | None = None) -> dict:
        """One pass over the training split; returns train means. One host sync, at the end."""
        cfg, model, x = self.cfg, self.model, self.x_train
        model.train()
        order = torch.randperm(len(x), generator=self.gen, device=self.device)
        sums = torch.zeros(3, device=self.device)  # loss * B, recon sum, KL sum
        trace, trace_steps = [], []
        for start in range(0, len(x), cfg.batch_size):
            idx = order[start:start + cfg.batch_size]
            if len(idx) < 2:  # BatchNorm cannot train on one image
                continue
            xb = x[idx]
            mu, logvar = model.encode(xb)
            eps = torch.randn(mu.shape, generator=self.gen, device=self.device, dtype=mu.dtype)
            z = reparameterize(mu, logvar, eps)
            if transform is not None:
                z = transform(z)
            loss, recon, kl = vae_loss(model.decode(z), xb, mu, logvar, self.step, cfg.recon_loss, cfg.schedule)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.step += 1
            sums += torch.stack([loss.detach() * len(idx), recon.detach().sum(), kl.detach().sum()])
            if cfg.track_every and self.step % cfg.track_every == 0:  # Fig. 2, stays on the device
                trace.append(torch.stack([mu.detach().var(0, unbiased=False), logvar.detach().exp().mean(0)]))
                trace_steps.append(self.step)
        loss, recon, kl = (sums / len(x)).tolist()
        if not all(math.isfinite(v) for v in (loss, recon, kl)):
            raise TrainingDiverged(f"loss became {loss} at epoch {self.epoch + 1}; lower lr or check the data")
        out = {"train_loss": loss, "train_recon": recon, "train_kl": kl,
               "lam_effective": kl_weight(self.step, cfg.schedule)}
        if trace:
            host = torch.stack(trace).cpu().tolist()
            out["trace"] = [{"step": s, "var_mu": v, "mean_sigma2": m} for s, (v, m) in zip(trace_steps, host)]
        return out

    def evaluate(self, with_gain: bool = True, mask: torch.Tensor | None = None) -> dict:
        """Collapse metrics on the eval split, with fixed sampling noise (same numbers every call)."""
        gen = torch.Generator(self.device).manual_seed(self.cfg.seed + 1)
        return evaluate(self.model, self.x_eval, self.cfg.recon_loss, self.cfg.tolerances, gen, with_gain, mask)

    def epochs(self, transform: LatentTransform | None = None) -> Iterator[dict]:
        """Train to ``cfg.epochs``, yielding after each epoch a flat metrics dict (plus 'latents')."""
        while self.epoch < self.cfg.epochs:
            yield self.run_epoch(transform)

    def run_epoch(self, transform: LatentTransform | None = None) -> dict:
        t0 = time.perf_counter()
        train = self.train_epoch(transform)
        self.epoch += 1
        train_time = time.perf_counter() - t0
        metrics = {"epoch": self.epoch, "step": self.step, "lam": self.cfg.lam, **train}
        evaluated, with_gain, fid_now = self.cfg.epoch_plan(self.epoch)
        if evaluated:
            self.last_eval = self.evaluate(with_gain=with_gain)
            metrics["latents"] = self.last_eval["latents"]
            self.settle.observe(self.step, active_indices(self.last_eval["latents"]),
                                self.last_eval["summary"]["law_residual_max"])
        # every report carries the latest collapse summary (schedulers need it each epoch)
        metrics.update(self.last_eval["summary"], **self.settle.status(), evaluated=evaluated)
        if fid_now:
            metrics.update(self.generation_scores())
        if self.epoch == self.cfg.epochs and self.cfg.two_stage:
            metrics.update(self.two_stage_scores())
        self.elapsed += time.perf_counter() - t0
        metrics.update(epoch_time=train_time, time_total=self.elapsed)
        self.history.append({k: v for k, v in metrics.items() if k not in ("latents", "trace")})
        return metrics

    def generation_scores(self) -> dict:
        """FID-proxy of random generations now (vaesweep/engine/fid.py): fid_prior, fid_recon, fid_zeroed,
        fid_seconds and fid_net_accuracy; empty (with a warning) for a data set without labels."""

        active = [r["active"] for r in self.last_eval["latents"]]
        scores, self._fid = trial_scores(self.data, self.cfg, self.model, active, self.cfg.seed, self._fid)
        return scores

    def two_stage_scores(self) -> dict:
        """The two-stage VAE (vaesweep/engine/two_stage.py, Dai & Wipf 2019): fit a second VAE to this model's
        codes; returns its ``two_stage_*`` numbers, ``fid_two_stage`` when the FID-proxy is on, and
        ``two_stage_seconds``. The fitted ``TwoStageVAE`` is kept as ``self.second_stage``."""

        t0 = time.perf_counter()
        active = [r["active"] for r in self.last_eval["latents"]]
        self.second_stage = fit_two_stage(self.model, self.x_train, active, settings_for(self.cfg))
        scorer = self._fid[0] if self._fid is not None else None  # built by generation_scores when fid is on
        scores = two_stage_scores(self.second_stage, self.x_eval, self.cfg.seed, scorer, self.cfg.active_threshold)
        return {**scores, "two_stage_seconds": time.perf_counter() - t0}

    def result(self) -> TrialResult:
        final = self.last_eval or self.evaluate()
        fid = {k: v for k, v in (self.history[-1] if self.history else {}).items()
               if k.startswith(("fid_", "two_stage_")) and k not in ("fid_seconds", "two_stage_seconds")}  # no timings
        return TrialResult(self.cfg, {**final["summary"], **self.settle.status(), **fid}, final["latents"],
                           self.history, self.model, self.second_stage)

    def final_metrics(self) -> dict | None:
        """The last epoch's report again (history row plus per-variable table), or None before any."""
        if not self.history:
            return None
        return {**self.history[-1], "latents": self.last_eval["latents"]}

    # --- checkpoints -------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "gen": self.gen.get_state(), "epoch": self.epoch, "step": self.step,
                "elapsed": self.elapsed, "history": self.history, "last_eval": self.last_eval,
                "settle": self.settle.state_dict(), "config": self.cfg.model_dump()}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.gen.set_state(state["gen"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.history, self.last_eval = state["history"], state["last_eval"]
        self.settle = SettleTracker.from_checkpoint(state, self.cfg)


def train_vae(config: TrialConfig | dict, report: Callable[[dict], None] | None = None) -> TrialResult:
    """Train one VAE from ``config`` (a dict of TrialConfig fields or a TrialConfig).

    Calls ``report(metrics)`` after every epoch: epoch, train loss parts, timing and (on eval
    epochs) the collapse summary (n_active, law_residual_max, kl_working, ..., and whether the collapse
    has settled: settled, settled_step; vaesweep/engine/settle.py) plus ``latents``,
    one dict per latent variable (mean_mu, var_mu, mean_sigma2, law, kl, recon_gain, active).
    Returns a TrialResult with the final summary, per-variable table, history and model.
    """
    run = TrialRun(config)
    for metrics in run.epochs():
        if report is not None:
            report(metrics)
    return run.result()


CHECKPOINT_FILE = "trial.pt"


def load_trained(path: str | Path) -> tuple[TrialConfig, dict]:
    """(config, model weights) of a trained trial: ``train --out``'s model.pt or a study's
    ``checkpoint_*/trial.pt``. Raises ValueError for any other file."""

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "config" not in state or "model" not in state:
        raise ValueError(f"'{path}' is not a vaesweep trial checkpoint; give a model.pt from train --out "
                         "or a checkpoint_*/trial.pt of a study")
    return TrialConfig(**{k: v for k, v in state["config"].items() if k in trial_fields()}), state["model"]


def build_trained(cfg: TrialConfig, weights: dict, shape: tuple[int, int, int]) -> torch.nn.Module:
    """The trial's VAE for images of ``shape``, holding ``weights``, in eval mode."""
    model = build_model(cfg.arch, shape, cfg.latent_dim, cfg.hidden, cfg.conv_width)
    model.load_state_dict(weights)
    return model.eval()


