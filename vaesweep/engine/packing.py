"""Packed trials: K configurations of one architecture trained together, in one set of batched kernels.

A study is hundreds of small VAEs. One per process leaves a GPU idle (launch overhead, not
arithmetic, sets the pace), so a ``PackedRun`` trains K ``TrialConfig``s at once:

- the K models are stacked with ``torch.func.stack_module_state`` and run with ``vmap`` over
  ``functional_call`` (dense layers become batched matmuls, convolutions grouped ones; the conv
  net's BatchNorm running statistics are stacked buffers, updated per configuration);
- one ``torch.optim.Adam`` over the stacked parameters is exactly K independent Adams (Adam is
  elementwise), so the configurations must share ``lr``;
- every configuration keeps its own numbers: its own weights (built exactly as ``TrialRun``
  builds them, from its seed), its own ``torch.Generator`` drawing its minibatch order and its
  reparametrization noise in ``TrialRun``'s order, and its own KL term, eq. (6), with its own
  lambda / warm-up / free bits / capacity schedule (Sec. 6.1; ``vaesweep.engine.losses.kl_term``);
- a smaller latent dimension lives inside the largest one of the pack: its model is copied into
  a zero-padded one (extra mu / logvar rows and decoder input columns are zero) and its extra
  variables are masked out of z and of the KL term, so their gradients are exactly zero, Adam
  leaves them at zero, and the math is the small model's.

What may differ inside a pack is ``PACK_VARIES``; every other TrialConfig field is shared.
Each configuration has the ``TrialRecord`` a ``TrialRun`` has (vaesweep/engine/trial.py: epoch plan,
evaluation, settle tracker, hooks, history, result); it scores the configuration's weights copied
back into a model of its own latent dimension, so packed and one-at-a-time runs agree to float
tolerance and report the same keys. A configuration that has ended (its final epoch, settled or budget,
or diverged) stops costing: the stack is rebuilt without it (the others' rows, Adam moments and
generators unchanged, so their numbers are too), it reports None from then on (a diverged one
``{"diverged": reason}``), and the pack ends when every configuration has. Checkpoints are K
``TrialRun`` state dicts, an ended configuration's as it ended.

Study side: ``pack_size(spec)`` (``pack: auto | K | off``; auto packs 16 when trials get a GPU),
``pack_param_space(spec, k)`` (a grid over packs of compatible configurations) and
``packed_trainable`` (the Ray Tune function trainable; it reports ``{"epoch", "packed": [...]}``
and ``vaesweep.study.recorder.Recorder`` splits that into one trial row per configuration).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from vaesweep.config.errors import TrainingDiverged
from vaesweep.config.packing import check_packable
from vaesweep.config.trial import TrialConfig
from vaesweep.engine.data import load_dataset
from vaesweep.engine.losses import KLSchedules, kl_weight, packed_loss
from vaesweep.engine.models import for_speed, memory_format, model_for, reparameterize
from vaesweep.engine.trial import EpochLoop, FidHook, TrialRecord, TrialResult, batch_starts, resolve_device


def _leading(shape: torch.Size) -> tuple[slice, ...]:
    """The index of a small tensor inside its zero-padded big one: the leading block."""
    return tuple(slice(0, n) for n in shape)


def _named_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


class _Forward(nn.Module):
    """Encode, sample z = mu + sigma * eps (eps given), mask missing variables, decode."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, eps, mask):
        mu, logvar = self.model.encode(x)
        z = reparameterize(mu, logvar, eps) * mask  # masked variables: z_i = 0, no gradient reaches them
        return self.model.decode(z), mu, logvar


class PackedRun(EpochLoop):
    """K trials' state in stacked tensors. ``epochs()`` trains and yields K metric dicts per epoch (a
    vaesweep.engine.run.Run)."""

    packed = True

    def __init__(self, configs: list[TrialConfig | dict]):
        self.cfgs = [c if isinstance(c, TrialConfig) else TrialConfig(**c) for c in configs]
        check_packable(self.cfgs)
        cfg = self.cfg = self.cfgs[0]
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        data = load_dataset(cfg.dataset, cfg.data_root, cfg.download, self.device, cfg.cache_dir)
        self.x_train, self.x_eval, self.data = data.train[: cfg.max_train], data.eval[: cfg.max_eval], data
        self.k = len(self.cfgs)
        self.latent = max(c.latent_dim for c in self.cfgs)
        self.models = [self._build(c.latent_dim, c.seed) for c in self.cfgs]  # TrialRun's weights
        template = self._build(self.latent, 0)
        padded = [copy.deepcopy(template) for _ in self.cfgs]
        with torch.no_grad():
            for small, big in zip(self.models, padded):
                for name, t in _named_tensors(big).items():
                    s = _named_tensors(small)[name]
                    t.zero_()
                    t[_leading(s.shape)].copy_(s)
        self.params, self.buffers = stack_module_state(padded)
        self._shell = _Forward(template.to("meta"))
        self._forward = vmap(self._call)
        self.optimizer = self._adam()
        lat = torch.arange(self.latent, device=self.device)
        self.mask = (lat[None] < torch.tensor([c.latent_dim for c in self.cfgs], device=self.device)[:, None]).float()
        self.kl = KLSchedules.of([c.schedule for c in self.cfgs], self.device)
        self.gens = [torch.Generator(self.device).manual_seed(c.seed) for c in self.cfgs]
        self.epoch, self.step, self.elapsed = 0, 0, 0.0
        self.live = list(range(self.k))  # the configurations in the stack, in its order
        self.ended: dict[int, dict] = {}  # an ended configuration's TrialRun state dict, as it ended
        steps_per_epoch = len(batch_starts(len(self.x_train), cfg.batch_size))
        self.cfgs = [c.for_epochs_of(steps_per_epoch) for c in self.cfgs]  # eval_every: auto resolved
        factors = data.eval_factor_columns(cfg.max_eval)
        self.records = [
            TrialRecord(c, lambda i=i: self.model(i), self.x_eval, factors) for i, c in enumerate(self.cfgs)
        ]
        fid = FidHook(data)  # one FID-proxy scorer for the pack
        for r in self.records:
            r.add_standard_hooks(self.x_train, fid)

    def _build(self, latent_dim: int, seed: int) -> nn.Module:
        cfg = self.cfg
        with torch.random.fork_rng(devices=[]):  # as TrialRun: weights from the seed, global RNG untouched
            torch.manual_seed(seed)
            model = model_for(cfg, self.data.shape, latent_dim)
        return for_speed(model.to(self.device), memory_format(cfg.memory_format, cfg.arch, self.device))

    def _adam(self) -> torch.optim.Adam:
        """One Adam over the stacked parameters (fused: one kernel per tensor), as each TrialRun's."""
        return torch.optim.Adam(self.params.values(), lr=self.cfg.lr, eps=self.cfg.adam_eps, fused=True)

    def _call(self, params, buffers, x, eps, mask):
        named = {f"model.{n}": t for n, t in {**params, **buffers}.items()}
        return functional_call(self._shell, named, (x, eps, mask))

    # --- training -------------------------------------------------------------------------
    def _draws(self, starts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """This epoch's minibatch orders (K, N) and noise (K, N', L), each configuration's generator
        drawn in TrialRun's order: randperm, then one randn (B, latent_dim) per minibatch."""
        n, bs = len(self.x_train), self.cfg.batch_size
        orders, noise = [], []
        for cfg, gen in ((self.cfgs[i], self.gens[i]) for i in self.live):
            orders.append(torch.randperm(n, generator=gen, device=self.device))
            eps = torch.cat(
                [torch.randn((min(bs, n - s), cfg.latent_dim), generator=gen, device=self.device) for s in starts]
            )
            noise.append(nn.functional.pad(eps, (0, self.latent - cfg.latent_dim)))
        return torch.stack(orders), torch.stack(noise)

    def train_epoch(self) -> list[dict]:
        """One pass over the training split for the configurations in the stack; their train-mean dicts.
        One host sync, at the end."""
        cfg, x = self.cfg, self.x_train
        starts = batch_starts(len(x), cfg.batch_size)
        orders, noise = self._draws(starts)
        coefs = self.kl.coefficients(self.step, len(starts))  # lambda(step), C(step): (steps, K, 2)
        params = list(self.params.values())
        sums = torch.zeros(len(self.live), 3, device=self.device)  # loss * B, recon sum, KL sum
        trace, trace_steps = [], []
        for j, start in enumerate(starts):
            idx = orders[:, start : start + cfg.batch_size]
            xb, eps = x[idx], noise[:, start : start + idx.shape[1]]
            logits, mu, logvar = self._forward(self.params, self.buffers, xb, eps, self.mask)
            loss, recon, kl = packed_loss(
                logits, xb, mu, logvar, self.mask, coefs[j], cfg.recon_loss, self.kl, cfg.bce_clip
            )
            for p in params:
                p.grad = None
            loss.sum().backward()  # sum of independent losses: each config gets exactly its own gradient
            self.optimizer.step()
            self.step += 1
            sums += torch.stack([loss.detach() * idx.shape[1], recon.detach().sum(1), kl.detach().sum((1, 2))], 1)
            if cfg.track_every and self.step % cfg.track_every == 0:  # Fig. 2, stays on the device
                trace.append(torch.stack([mu.detach().var(1, unbiased=False), logvar.detach().exp().mean(1)], 1))
                trace_steps.append(self.step)
        host = (sums / len(x)).cpu().tolist()
        traces = torch.stack(trace).cpu().tolist() if trace else None  # (T, K, 2, L)
        out = []
        for row, (i, (loss, recon, kl)) in enumerate(zip(self.live, host)):
            c = self.cfgs[i]
            if not all(math.isfinite(v) for v in (loss, recon, kl)):
                self.records[i].diverged = f"loss became {loss} at epoch {self.epoch + 1}; lower lr or check the data"
            m = {
                "train_loss": loss,
                "train_recon": recon,
                "train_kl": kl,
                "lam_effective": kl_weight(self.step, c.schedule),
            }
            if traces is not None:
                m["trace"] = [
                    {"step": s, "var_mu": t[row][0][: c.latent_dim], "mean_sigma2": t[row][1][: c.latent_dim]}
                    for s, t in zip(trace_steps, traces)
                ]
            out.append(m)
        return out

    # --- per-configuration models and metrics ---------------------------------------------
    @torch.no_grad()
    def model(self, i: int) -> nn.Module:
        """Configuration ``i``'s model at its own latent dimension, holding its current weights."""
        if i in self.live:
            row, stacked = self.live.index(i), {**self.params, **self.buffers}
            for name, t in _named_tensors(self.models[i]).items():
                t.copy_(stacked[name][row][_leading(t.shape)])
        return self.models[i]

    def epochs(self) -> Iterator[list[dict | None]]:
        """Train until every configuration has ended, yielding after each epoch K reports (TrialRun's; a
        diverged configuration's ``{"diverged": reason}``, one that ended in an earlier epoch None)."""
        while self.live and self.epoch < self.cfg.epochs:
            yield self.run_epoch()

    def run_epoch(self) -> list[dict | None]:
        out = self._run_epoch(self.train_epoch)
        ended = [i for i in self.live if i not in self.training()]
        if ended:
            opt = self.optimizer.state_dict()
            self.ended.update({i: self._state_dict(i, opt) for i in ended})
            self._keep([i for i in self.live if i not in ended])
        return out

    @torch.no_grad()
    def _keep(self, live: list[int]) -> None:
        """Rebuild the stack with only the configurations ``live`` (each leaves its model with its weights):
        their parameters, buffers, Adam moments, masks and KL schedules, rows unchanged."""
        for i in self.live:
            self.model(i)
        if live:
            rows = torch.tensor([self.live.index(i) for i in live], device=self.device)
            opt = self.optimizer.state_dict()
            self.params = {n: p.detach()[rows].clone().requires_grad_() for n, p in self.params.items()}
            self.buffers = {n: b[rows].clone() for n, b in self.buffers.items()}
            self.optimizer = self._adam()
            state = {
                j: {"step": s["step"], "exp_avg": s["exp_avg"][rows], "exp_avg_sq": s["exp_avg_sq"][rows]}
                for j, s in opt["state"].items()
            }
            self.optimizer.load_state_dict({"state": state, "param_groups": opt["param_groups"]})
            self.mask = self.mask[rows]
            self.kl = KLSchedules.of([self.cfgs[i].schedule for i in live], self.device)
        self.live = live

    def result(self, i: int) -> TrialResult:
        """Configuration ``i``'s TrialResult (as TrialRun.result); raises TrainingDiverged if it diverged."""
        c, reason = self.cfgs[i], self.records[i].diverged
        if reason is not None:
            raise TrainingDiverged(f"configuration {i} (seed {c.seed}, lam {c.lam}): {reason}")
        return self.records[i].result()

    def results(self) -> list[TrialResult]:
        return [self.result(i) for i in range(self.k)]

    def final_metrics(self) -> list[dict | None] | None:
        """The last epoch's K reports again (as TrialRun.final_metrics), or None before any epoch."""
        if self.epoch == 0:
            return None
        return [r.final_metrics() for r in self.records]

    # --- checkpoints: K TrialRun state dicts ------------------------------------------------
    def state_dicts(self) -> list[dict]:
        """One ``TrialRun.state_dict()`` per configuration (TrialRun can resume any of them); an ended
        configuration's as it ended."""
        opt = self.optimizer.state_dict()
        return [self.ended[i] if i in self.ended else self._state_dict(i, opt) for i in range(self.k)]

    def _state_dict(self, i: int, opt: dict) -> dict:
        """Configuration ``i``'s TrialRun state dict, from the stack's Adam state ``opt``."""
        model, row = self.model(i), self.live.index(i)
        shapes = [p.shape for p in model.parameters()]
        state = {
            j: {
                "step": s["step"].detach().cpu().clone(),  # as a plain CPU Adam keeps it
                **{key: s[key][row][_leading(shapes[j])].clone() for key in ("exp_avg", "exp_avg_sq")},
            }
            for j, s in opt["state"].items()
        }
        return {
            "model": {k: v.clone() for k, v in model.state_dict().items()},
            "optimizer": {"state": state, "param_groups": copy.deepcopy(opt["param_groups"])},
            "gen": self.gens[i].get_state(),
            "epoch": self.epoch,
            "step": self.step,
            "elapsed": self.elapsed,
            **self.records[i].state_dict(),
        }

    @torch.no_grad()
    def load_state_dicts(self, states: list[dict]) -> None:
        """Restore from ``state_dicts()`` (zero-padding each configuration into the stack, then dropping
        the ended ones)."""
        if len(states) != self.k:
            raise ValueError(f"checkpoint holds {len(states)} configurations, this pack has {self.k}")
        ended = {i for i, st in enumerate(states) if st.get("stopped_reason") or st.get("diverged")}
        live = [i for i in range(self.k) if i not in ended]
        now = states[live[0]] if live else max(states, key=lambda st: st["epoch"])  # where the pack stands
        stacked = {**self.params, **self.buffers}
        params = list(self.params.values())
        adam = {
            j: {
                "step": now["optimizer"]["state"][j]["step"].clone(),
                "exp_avg": torch.zeros_like(p),
                "exp_avg_sq": torch.zeros_like(p),
            }
            for j, p in enumerate(params)
            if j in now["optimizer"]["state"]
        }
        for i, st in enumerate(states):
            for name, t in st["model"].items():
                stacked[name][i].zero_()
                stacked[name][i][_leading(t.shape)].copy_(t)
            for j, s in st["optimizer"]["state"].items():
                for key in ("exp_avg", "exp_avg_sq"):
                    adam[j][key][i][_leading(s[key].shape)].copy_(s[key])
            self.gens[i].set_state(st["gen"])
            self.records[i].load_state_dict(st)
        self.optimizer.load_state_dict({"state": adam, "param_groups": now["optimizer"]["param_groups"]})
        self.epoch, self.step, self.elapsed = now["epoch"], now["step"], now["elapsed"]
        self.ended = {i: states[i] for i in ended}
        self._keep(live)


def train_packed(configs: list[TrialConfig | dict], report=None) -> list[TrialResult]:
    """Train K configurations as one pack; ``report(list_of_K_metric_dicts)`` after every epoch."""
    run = PackedRun(configs)
    for metrics in run.epochs():
        if report is not None:
            report(metrics)
    return run.results()
