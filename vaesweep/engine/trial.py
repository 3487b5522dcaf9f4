"""The trial function: train one VAE, report collapse metrics after every epoch.

Public API, the same numbers for the same seed and device whichever way it is called:
    result = vaesweep.train_vae({"arch": "dense", "latent_dim": 16, "lam": 1.0}, report=print)
    tune.Tuner(vaesweep.trainable, param_space={"lam": tune.grid_search([0.5, 1, 2])}).fit()

``train_vae`` is plain Python; ``trainable`` is the Ray Tune function trainable (Ray's own
``tune.report`` with a checkpoint each epoch, restored from ``tune.get_checkpoint()``).
Both drive a ``TrialRun``, which owns the data, model, optimiser and RNG of one trial.

What happens to a configuration after each training epoch is the same for a plain trial and a
packed one (vaesweep/engine/packing.py): a ``TrialRecord`` follows ``TrialConfig.epoch_plan``
(evaluate, with reconstruction gains or not), watches the settle tracker, decides whether the epoch is
the trial's final one (its budget's last, or with ``stop_when: settled`` the first evaluation whose
collapse has settled), runs its hooks (the FID-proxy at the end of an epoch, the two-stage VAE at the
end of the trial), keeps the history and gives the ``TrialResult``. The two runs differ only in how
they train an epoch and hand out a model.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from vaesweep.config.errors import TrainingDiverged
from vaesweep.config.metrics import trial_row
from vaesweep.config.trial import TrialConfig
from vaesweep.engine.data import ImageData, load_dataset
from vaesweep.engine.fid import trial_scores
from vaesweep.engine.information import importance_weighted_nll
from vaesweep.engine.latents import evaluate
from vaesweep.engine.losses import KLSchedules, kl_weight, vae_loss
from vaesweep.engine.models import for_speed, memory_format, model_for, reparameterize
from vaesweep.engine.settle import SettleTracker, active_indices
from vaesweep.engine.two_stage import fit_two_stage, settings_for, two_stage_scores

LatentTransform = Callable[[torch.Tensor], torch.Tensor]
Hook = Callable[["TrialRecord", int], dict]  # (the configuration's record, epoch) -> extra metrics


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' asked for but no CUDA GPU is visible; use device: auto or cpu")
    return torch.device(name)


def batch_starts(n: int, batch_size: int) -> list[int]:
    """Where every minibatch of an epoch starts; a final batch of one image is skipped (BatchNorm
    cannot train on one image)."""
    return [s for s in range(0, n, batch_size) if min(batch_size, n - s) >= 2]


@dataclass
class TrialResult:
    """What a finished trial leaves: final summary, per-variable table, history, the model."""

    config: TrialConfig
    summary: dict
    latents: list[dict]
    history: list[dict] = field(default_factory=list)
    model: torch.nn.Module | None = None
    second_stage: object | None = None  # vaesweep.engine.two_stage.TwoStageVAE (two_stage: true)


# --- hooks: what a configuration measures beyond the collapse metrics --------------------------------
class FidHook:
    """End of epoch: the FID-proxy on the epochs ``epoch_plan`` names (vaesweep/engine/fid.py): fid_prior,
    fid_recon, fid_zeroed, fid_seconds, fid_net_accuracy; nothing (with a warning) for unlabelled data.
    One scorer, built on first use, serves every configuration of the run."""

    def __init__(self, data: ImageData):
        self.data, self.scorer = data, None  # (FidScorer, TrainedFeatureNet)

    def __call__(self, record: TrialRecord, epoch: int) -> dict:
        if not record.cfg.epoch_plan(epoch, record.final)[2]:
            return {}
        cfg = record.cfg
        scores, self.scorer = trial_scores(self.data, cfg, record.model(), record.active(), cfg.seed, self.scorer)
        return scores


class LikelihoodHook:
    """End of trial: the importance-weighted NLL (vaesweep/engine/information.py, Burda et al. 2015) with
    ``iw_samples`` codes per image on the first ``iw_images`` eval images, its noise fixed by the seed:
    ``nll_iw`` and ``nll_iw_seconds``."""

    def __call__(self, record: TrialRecord, epoch: int) -> dict:
        t0, cfg = time.perf_counter(), record.cfg
        gen = torch.Generator(record.x_eval.device).manual_seed(cfg.seed + 2)
        x = record.x_eval[: cfg.iw_images]
        nll = importance_weighted_nll(record.model(), x, cfg.recon_loss, cfg.iw_samples, gen)
        return {"nll_iw": nll, "nll_iw_seconds": time.perf_counter() - t0}


class TwoStageHook:
    """End of trial: the two-stage VAE (vaesweep/engine/two_stage.py, Dai & Wipf 2019) fitted to the
    configuration's codes; its ``two_stage_*`` numbers, ``fid_two_stage`` when the FID-proxy is on, and
    ``two_stage_seconds``. The fitted ``TwoStageVAE`` is kept as ``record.second_stage``."""

    def __init__(self, x_train: torch.Tensor, fid: FidHook | None):
        self.x_train, self.fid = x_train, fid

    def __call__(self, record: TrialRecord, epoch: int) -> dict:
        t0, cfg = time.perf_counter(), record.cfg
        record.second_stage = fit_two_stage(record.model(), self.x_train, record.active(), settings_for(cfg))
        scorer = self.fid.scorer[0] if self.fid is not None and self.fid.scorer is not None else None
        scores = two_stage_scores(record.second_stage, record.x_eval, cfg.seed, scorer, cfg.active_threshold)
        return {**scores, "two_stage_seconds": time.perf_counter() - t0}


# --- one configuration's bookkeeping, for plain and packed runs alike --------------------------------
class TrialRecord:
    """One configuration's epochs after training: evaluation per ``TrialConfig.epoch_plan``, the settle
    tracker (vaesweep/engine/settle.py), whether the trial has ended (``final``), hooks, history, result
    and its part of a checkpoint.

    ``model()`` hands out the configuration's current model (a TrialRun's own, or a packed one copied out).
    """

    def __init__(
        self,
        cfg: TrialConfig,
        model: Callable[[], torch.nn.Module],
        x_eval: torch.Tensor,
        factors: dict[str, torch.Tensor] | None = None,
    ):
        self.cfg, self.model, self.x_eval = cfg, model, x_eval
        self.factors = factors  # the eval images' known factors (generated data), else empty
        self.history: list[dict] = []
        self.last_eval: dict | None = None
        self.settle = SettleTracker.for_config(cfg)  # has the collapse settled?
        self.diverged: str | None = None  # why training diverged (packed runs go on without it)
        self.stopped_reason: str | None = None  # "budget" | "settled" once the final epoch has closed
        self.stopped_step: int | None = None  # the minibatch it ended at
        self.on_epoch: list[Hook] = []  # after every epoch's collapse metrics
        self.on_trial_end: list[Hook] = []  # after the final epoch's
        self.second_stage = None  # set by TwoStageHook

    def add_standard_hooks(self, x_train: torch.Tensor, fid: FidHook) -> None:
        """The configuration's hooks: the FID-proxy when ``fid`` is on, the importance-weighted NLL when
        ``iw_samples`` > 0, the two-stage VAE when ``two_stage``."""
        if self.cfg.fid:
            self.on_epoch.append(fid)
        if self.cfg.iw_samples:
            self.on_trial_end.append(LikelihoodHook())
        if self.cfg.two_stage:
            self.on_trial_end.append(TwoStageHook(x_train, fid if self.cfg.fid else None))

    def evaluate(self, with_gain: bool = True) -> dict:
        """Collapse metrics on the eval split, with fixed sampling noise (same numbers every call)."""
        gen = torch.Generator(self.x_eval.device).manual_seed(self.cfg.seed + 1)
        cfg = self.cfg
        x, tol = self.x_eval, cfg.tolerances
        return evaluate(self.model(), x, cfg.recon_loss, tol, gen, with_gain, cfg.mi_images, self.factors)

    def active(self) -> list[bool]:
        return [r["active"] for r in self.last_eval["latents"]]

    @property
    def final(self) -> bool:
        """Whether the trial has ended: its final epoch (budget or settled) has closed."""
        return self.stopped_reason is not None

    def close_epoch(self, epoch: int, step: int, train: dict) -> dict:
        """The report of ``epoch`` (timings come with ``log``): train means, the latest collapse summary
        (every report carries it: schedulers need it each epoch), settle status and the hooks' metrics;
        the final epoch's also ``stopped_reason`` and ``stopped_step``.

        The final epoch is the budget's last, or with ``stop_when: settled`` the first evaluated one whose
        collapse has settled, with the same Sec. 4 verdict over the settle window, after at least
        ``stop_min_steps`` minibatches; either measures everything."""
        metrics = {"epoch": epoch, "step": step, "lam": self.cfg.lam, **train}
        budget = epoch >= self.cfg.epochs
        evaluated, with_gain, _ = self.cfg.epoch_plan(epoch, budget)
        if evaluated:
            self.last_eval = self.evaluate(with_gain=with_gain)
            summary = self.last_eval["summary"]
            self.settle.observe(
                step, active_indices(self.last_eval["latents"]), summary["law_residual_max"], summary["kl_working"]
            )
        # settled and its Sec. 4 verdict the same over the settle window (vaesweep/engine/settle.py)
        settled = self.cfg.stop_when == "settled" and evaluated and self.settle.stops(step, self.cfg.stop_min_steps)
        if budget or settled:
            self.stopped_reason, self.stopped_step = "budget" if budget else "settled", step
            if not with_gain:  # settled on an epoch without gains: the same evaluation, with them
                self.last_eval = self.evaluate(with_gain=True)
        if evaluated:
            metrics["latents"] = self.last_eval["latents"]
        metrics.update(self.last_eval["summary"], **self.settle.status(), evaluated=evaluated)
        if self.final:
            metrics.update(stopped_reason=self.stopped_reason, stopped_step=self.stopped_step)
        for hook in self.on_epoch + (self.on_trial_end if self.final else []):
            metrics.update(hook(self, epoch))
        return metrics

    def log(self, metrics: dict, epoch_time: float, time_total: float) -> None:
        """Add the epoch's wall-clock seconds to its report and keep it (without per-variable lists)."""
        metrics.update(epoch_time=epoch_time, time_total=time_total)
        self.history.append({k: v for k, v in metrics.items() if k not in ("latents", "trace")})

    def result(self) -> TrialResult:
        """The final summary: the collapse metrics, settle status and the last report's other trial
        metrics (fid_*, two_stage_*, noise_*; no timings: vaesweep.config.metrics.trial_row)."""
        final = self.last_eval or self.evaluate()
        extras = trial_row(self.history[-1]) if self.history else {}
        return TrialResult(
            self.cfg,
            {**final["summary"], **self.settle.status(), **extras},
            final["latents"],
            self.history,
            self.model(),
            self.second_stage,
        )

    def final_metrics(self) -> dict | None:
        """The last epoch's report again (history row plus per-variable table), or None before any."""
        if self.diverged is not None:
            return {"diverged": self.diverged}
        if not self.history:
            return None
        return {**self.history[-1], "latents": self.last_eval["latents"]}

    def state_dict(self) -> dict:
        return {
            "history": list(self.history),
            "last_eval": self.last_eval,
            "settle": self.settle.state_dict(),
            "config": self.cfg.model_dump(),
            "diverged": self.diverged,
            "stopped_reason": self.stopped_reason,
            "stopped_step": self.stopped_step,
        }

    def load_state_dict(self, state: dict) -> None:
        self.history, self.last_eval = list(state["history"]), state["last_eval"]
        self.settle = SettleTracker.from_checkpoint(state, self.cfg)
        self.diverged = state.get("diverged")
        self.stopped_reason, self.stopped_step = state.get("stopped_reason"), state.get("stopped_step")


class EpochLoop:
    """The epoch of every run: train (the subclass's way, one train-means dict per configuration still
    training), then each of their ``TrialRecord``s closes the epoch. Subclasses set ``records``, ``epoch``,
    ``step`` and ``elapsed``."""

    records: list[TrialRecord]

    def training(self) -> list[int]:
        """The configurations still training: neither final nor diverged."""
        return [i for i, r in enumerate(self.records) if not r.final and r.diverged is None]

    @property
    def finished(self) -> bool:
        """Every configuration ended: its budget spent, settled with ``stop_when: settled``, or diverged."""
        return not self.training()

    def _run_epoch(self, train: Callable[[], list[dict]]) -> list[dict | None]:
        """One report per configuration: its metrics, ``{"diverged": reason}``, or None once it has ended."""
        t0 = time.perf_counter()
        training = self.training()
        trains = train()  # one per configuration of ``training``
        self.epoch += 1
        train_time = time.perf_counter() - t0
        out = [{"diverged": r.diverged} if r.diverged is not None else None for r in self.records]
        for i, t in zip(training, trains):
            r = self.records[i]
            out[i] = r.close_epoch(self.epoch, self.step, t) if r.diverged is None else {"diverged": r.diverged}
        self.elapsed += time.perf_counter() - t0
        for i in training:
            if self.records[i].diverged is None:
                self.records[i].log(out[i], epoch_time=train_time, time_total=self.elapsed)  # the run's wall time
        return out


class TrialRun(EpochLoop):
    """One trial's state. ``epochs()`` trains and yields each epoch's metrics (a vaesweep.engine.run.Run)."""

    packed, k = False, 1

    def __init__(self, config: TrialConfig | dict):
        cfg = config if isinstance(config, TrialConfig) else TrialConfig(**config)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, self.device, cfg.cache_dir)
        self.x_train = data.train[: cfg.max_train]
        self.x_eval = data.eval[: cfg.max_eval]
        self.data = data
        with torch.random.fork_rng(devices=[]):  # weights from the trial seed, global RNG untouched
            torch.manual_seed(cfg.seed)
            self.model = model_for(cfg, data.shape)
        self.model = for_speed(self.model.to(self.device), memory_format(cfg.memory_format, cfg.arch, self.device))
        # fused: one kernel per tensor (PackedRun's too); the same Adam as the default loop to float rounding
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, eps=cfg.adam_eps, fused=True)
        self.gen = torch.Generator(self.device).manual_seed(cfg.seed)
        self.kl = KLSchedules.of([cfg.schedule], self.device)
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        steps_per_epoch = len(batch_starts(len(self.x_train), cfg.batch_size))
        factors = data.eval_factor_columns(cfg.max_eval)
        self.record = TrialRecord(cfg.for_epochs_of(steps_per_epoch), lambda: self.model, self.x_eval, factors)
        self.record.add_standard_hooks(self.x_train, FidHook(data))
        self.records = [self.record]

    # the configuration and its bookkeeping live in the record (the noise experiment changes cfg.epochs)
    @property
    def cfg(self) -> TrialConfig:
        return self.record.cfg

    @cfg.setter
    def cfg(self, cfg: TrialConfig) -> None:
        self.record.cfg = cfg

    @property
    def history(self) -> list[dict]:
        return self.record.history

    @property
    def settle(self) -> SettleTracker:
        return self.record.settle

    @property
    def last_eval(self) -> dict | None:
        return self.record.last_eval

    # --- training -------------------------------------------------------------------------
    def train_epoch(self, transform: LatentTransform | None = None) -> dict:
        """One pass over the training split; returns train means. One host sync, at the end."""
        cfg, model, x = self.cfg, self.model, self.x_train
        model.train()
        order = torch.randperm(len(x), generator=self.gen, device=self.device)
        starts = batch_starts(len(x), cfg.batch_size)
        coefs = self.kl.coefficients(self.step, len(starts))  # lambda(step), C(step): (steps, 1, 2)
        sums = torch.zeros(3, device=self.device)  # loss * B, recon sum, KL sum
        trace, trace_steps = [], []
        for j, start in enumerate(starts):
            idx = order[start : start + cfg.batch_size]
            xb = x.index_select(0, idx)  # the rows of x[idx], one copy per row instead of per element
            mu, logvar = model.encode(xb)
            eps = torch.randn(mu.shape, generator=self.gen, device=self.device, dtype=mu.dtype)
            z = reparameterize(mu, logvar, eps)
            if transform is not None:
                z = transform(z)
            loss, recon, kl = vae_loss(model.decode(z), xb, mu, logvar, coefs[j], cfg.recon_loss, self.kl, cfg.bce_clip)
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
        out = {
            "train_loss": loss,
            "train_recon": recon,
            "train_kl": kl,
            "lam_effective": kl_weight(self.step, cfg.schedule),
        }
        if trace:
            host = torch.stack(trace).cpu().tolist()
            out["trace"] = [{"step": s, "var_mu": v, "mean_sigma2": m} for s, (v, m) in zip(trace_steps, host)]
        return out

    def evaluate(self, with_gain: bool = True) -> dict:
        """Collapse metrics on the eval split, with fixed sampling noise (same numbers every call)."""
        return self.record.evaluate(with_gain)

    def epochs(self, transform: LatentTransform | None = None) -> Iterator[dict]:
        """Train to the final epoch (``cfg.epochs``, or settled with ``stop_when: settled``), yielding after
        each epoch a flat metrics dict (plus 'latents')."""
        while not self.record.final and self.epoch < self.cfg.epochs:
            yield self.run_epoch(transform)

    def run_epoch(self, transform: LatentTransform | None = None) -> dict:
        return self._run_epoch(lambda: [self.train_epoch(transform)])[0]

    def result(self) -> TrialResult:
        return self.record.result()

    def final_metrics(self) -> dict | None:
        """The last epoch's report again (history row plus per-variable table), or None before any."""
        return self.record.final_metrics()

    # --- checkpoints (vaesweep/engine/checkpoints.py writes them) ------------------------------
    def state_dict(self) -> dict:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "gen": self.gen.get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            **self.record.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        _lay_out_like_params(self.optimizer)
        self.gen.set_state(state["gen"])
        self.epoch, self.step, self.elapsed = state["epoch"], state["step"], state["elapsed"]
        self.record.load_state_dict(state)

    def state_dicts(self) -> list[dict]:
        return [self.state_dict()]

    def load_state_dicts(self, states: list[dict]) -> None:
        self.load_state_dict(*states)


def _lay_out_like_params(optimizer: torch.optim.Optimizer) -> None:
    """Adam's moments in their parameters' memory format. A checkpoint written in another layout (contiguous,
    before ``memory_format: auto`` made the conv net channels_last on a CPU) keeps its strides through
    ``load_state_dict``, and the fused kernel pairs elements by storage order, not by index: resumed as they are,
    the moments would update the wrong weights."""
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p).copy_(value)


def train_vae(config: TrialConfig | dict, report: Callable[[dict], None] | None = None) -> TrialResult:
    """Train one VAE from ``config`` (a dict of TrialConfig fields or a TrialConfig).

    Calls ``report(metrics)`` after every epoch up to the final one (``epochs``, or with ``stop_when:
    settled`` the first settled evaluation; its report adds stopped_reason, stopped_step): epoch, train
    loss parts, timing and (on eval epochs) the collapse summary (n_active, law_residual_max, kl_working,
    ..., and whether the collapse has settled: settled, settled_step; vaesweep/engine/settle.py) plus
    ``latents``, one dict per latent variable (mean_mu, var_mu, mean_sigma2, law, kl, recon_gain, active).
    Returns a TrialResult with the final summary, per-variable table, history and model.
    """
    run = TrialRun(config)
    for metrics in run.epochs():
        if report is not None:
            report(metrics)
    return run.result()
