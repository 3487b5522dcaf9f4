"""Where a conv training step's time goes, and what the run-level speed settings buy (issue 24).

    nice -n 15 python benchmarks/conv_step.py --out benchmarks/results/conv_step

One thread, the Fig. 4 conv VAE of ``vaesweep.engine.models`` (latent 16, width 32, 28x28), one minibatch of
``--batch-size`` images, a full training step as ``TrialRun.train_epoch`` takes it: encode, reparametrize,
decode, eq. (6), backward, fused Adam. Four layouts of the same seeded model, timed interleaved, each the best
of ``--repeats`` rounds of ``--steps`` steps in thread CPU seconds (``time.thread_time``: other jobs on a
shared machine add less to it than to wall time):

- ``contiguous``: the model as built (the trial's layout before issue 24);
- ``inplace``: ReLUs in place only;
- ``channels_last``: weights (hence activations) in channels_last only;
- ``for_speed``: both, what ``TrialRun`` uses on a CPU (``memory_format: auto``).

Also: MFLOP per image from the model's own layers (``torch.utils.flop_counter.FlopCounterMode`` over one
step), this machine's single-thread sgemm peak (best 2048^3 ``torch.mm``), each layout's share of it; the
``for_speed`` step under ``torch.profiler`` split into forward, backward and optimizer and per layer
(forward and backward of every convolution, from its input shape); the evaluation pass (``evaluate`` on
``--eval-images`` images with reconstruction gains) in both layouts; ``--compile`` adds a ``torch.compile``d
forward + loss with its compile time (process CPU and wall seconds; the compile workers' CPU is not counted).
Writes ``--out``.md (and .csv of the layout table).
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function
from torch.utils.flop_counter import FlopCounterMode

from vaesweep.config.trial import KLSchedule, Tolerances
from vaesweep.engine.data import load_dataset
from vaesweep.engine.latents import evaluate
from vaesweep.engine.losses import KLSchedules, vae_loss
from vaesweep.engine.models import ConvVAE, for_speed, reparameterize

LAYOUTS = ("contiguous", "inplace", "channels_last", "for_speed")


def layout(model: nn.Module, name: str) -> nn.Module:
    model = copy.deepcopy(model)
    if name == "inplace":
        return for_speed(model, torch.contiguous_format)
    if name == "channels_last":
        return model.to(memory_format=torch.channels_last)
    if name == "for_speed":
        return for_speed(model, torch.channels_last)
    return model


class Step:
    """One training step of ``model`` on a fixed minibatch, as TrialRun.train_epoch takes it."""

    def __init__(self, model: nn.Module, x: torch.Tensor, lr: float = 1e-3):
        self.model, self.x = model, x
        self.opt = torch.optim.Adam(model.parameters(), lr=lr, fused=True)
        self.sched = KLSchedules.of([KLSchedule(lam=1.0)], x.device)
        self.coef = torch.tensor([[1.0, 0.0]])
        self.gen = torch.Generator().manual_seed(0)

    def __call__(self, marks: bool = False) -> None:
        def mark(name):
            return record_function(name) if marks else _null()

        with mark("forward"):
            mu, logvar = self.model.encode(self.x)
            eps = torch.randn(mu.shape, generator=self.gen)
            z = reparameterize(mu, logvar, eps)
            loss, _, _ = vae_loss(self.model.decode(z), self.x, mu, logvar, self.coef, "bce", self.sched)
        with mark("backward"):
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
        with mark("optimizer"):
            self.opt.step()


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def sgemm_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    best = float("inf")
    for _ in range(repeats + 1):
        t0 = time.thread_time()
        torch.mm(a, b)
        best = min(best, time.thread_time() - t0)
    return 2 * n**3 / best / 1e9


def flops_per_image(model: nn.Module, x: torch.Tensor) -> float:
    step = Step(copy.deepcopy(model), x)
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops() / len(x)


def best_of(steps: dict, n_steps: int, repeats: int) -> dict[str, float]:
    """Seconds per step of each callable, interleaved, best of ``repeats`` rounds of ``n_steps``."""
    for fn in steps.values():
        fn()
        fn()
    best = dict.fromkeys(steps, float("inf"))
    for _ in range(repeats):
        for name, fn in steps.items():
            t0 = time.thread_time()
            for _ in range(n_steps):
                fn()
            best[name] = min(best[name], (time.thread_time() - t0) / n_steps)
    return best


def where_time_goes(model: nn.Module, x: torch.Tensor, n_steps: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The for_speed step under torch.profiler: forward / backward / optimizer, and per convolution layer."""
    step = Step(model, x)
    step()
    step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(n_steps):
            step(marks=True)
    events = prof.key_averages()
    phases = pd.DataFrame(
        [
            {"phase": e.key, "ms_per_step": round(e.cpu_time_total / 1e3 / n_steps, 2)}
            for e in events
            if e.key in ("forward", "backward", "optimizer")
        ]
    )
    names = {}  # layer input shape -> layer name, for the per-layer rows
    for name, mod in model.named_modules():
        if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d)):
            mod.register_forward_hook(lambda m, i, o, name=name: names.setdefault((name, tuple(i[0].shape)), m))
    with torch.no_grad():
        model.decode(model.encode(x)[0])
    by_shape = prof.key_averages(group_by_input_shape=True)
    rows = []
    for (name, shape), mod in names.items():
        kind = "transposed" if isinstance(mod, nn.ConvTranspose2d) else "conv"
        w = tuple(mod.weight.shape)
        fwd = sum(
            e.cpu_time_total
            for e in by_shape
            if e.key == "aten::convolution"
            and e.input_shapes
            and tuple(e.input_shapes[0]) == shape
            and tuple(e.input_shapes[1]) == w
        )
        bwd = sum(
            e.cpu_time_total
            for e in by_shape
            if e.key == "aten::convolution_backward"
            and e.input_shapes
            and tuple(e.input_shapes[1]) == shape
            and tuple(e.input_shapes[2]) == w
        )
        rows.append(
            {
                "layer": name,
                "kind": kind,
                "input": "x".join(map(str, shape[1:])),
                "weight": "x".join(map(str, w)),
                "forward_ms": round(fwd / 1e3 / n_steps, 2),
                "backward_ms": round(bwd / 1e3 / n_steps, 2),
            }
        )
    layers = pd.DataFrame(rows)
    bn = sum(e.cpu_time_total for e in events if "batch_norm" in e.key and not e.key.startswith("autograd"))
    relu = sum(e.cpu_time_total for e in events if e.key in ("aten::relu_", "aten::relu", "aten::threshold_backward"))
    extra = pd.DataFrame(
        [
            {"layer": "BatchNorm (all, fwd+bwd)", "forward_ms": round(bn / 1e3 / n_steps, 2)},
            {"layer": "ReLU (all, fwd+bwd)", "forward_ms": round(relu / 1e3 / n_steps, 2)},
        ]
    )
    return phases, pd.concat([layers, extra], ignore_index=True)


def eval_seconds(model: nn.Module, x: torch.Tensor) -> float:
    t0 = time.thread_time()
    evaluate(model, x, "bce", Tolerances(), torch.Generator().manual_seed(1), with_gain=True)
    return time.thread_time() - t0


def compiled_step(model: nn.Module, x: torch.Tensor):
    """for_speed's step with forward + loss through torch.compile; returns (step, compile seconds cpu, wall)."""
    step = Step(model, x)

    def forward(x, eps):
        mu, logvar = model.encode(x)
        z = reparameterize(mu, logvar, eps)
        return vae_loss(model.decode(z), x, mu, logvar, step.coef, "bce", step.sched)[0]

    fwd = torch.compile(forward)

    def run():
        loss = fwd(x, torch.randn(len(x), model.latent_dim, generator=step.gen))
        step.opt.zero_grad(set_to_none=True)
        loss.backward()
        step.opt.step()

    c0, w0 = time.process_time(), time.perf_counter()
    run()
    return run, time.process_time() - c0, time.perf_counter() - w0


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in table.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--steps", type=int, default=5, help="steps per timed round")
    p.add_argument("--repeats", type=int, default=4, help="interleaved rounds; the best is kept")
    p.add_argument("--eval-images", type=int, default=1000)
    p.add_argument("--compile", action="store_true", help="also time a torch.compile'd step and its compile")
    p.add_argument("--out", default="benchmarks/results/conv_step")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    data = load_dataset("mnist5k")
    x = data.train[: args.batch_size]
    base = ConvVAE(data.shape, 16)
    models = {name: layout(base, name) for name in LAYOUTS}
    flops = flops_per_image(base, x)
    peak = sgemm_gflops()
    steps = {name: Step(m, x) for name, m in models.items()}
    if args.compile:
        run, c_cpu, c_wall = compiled_step(layout(base, "for_speed"), x)
        steps["for_speed + torch.compile"] = run
    best = best_of(steps, args.steps, args.repeats)
    evals = {n: eval_seconds(models[n], data.eval[: args.eval_images]) for n in ("contiguous", "for_speed")}
    rows = []
    for name, seconds in best.items():
        gflops = flops * args.batch_size / seconds / 1e9
        rows.append(
            {
                "layout": name,
                "ms_per_step": round(seconds * 1e3, 1),
                "gflop_per_s": round(gflops, 1),
                "peak_share": round(gflops / peak, 3),
                "speedup": round(best["contiguous"] / seconds, 2),
            }
        )
    table = pd.DataFrame(rows)
    phases, layers = where_time_goes(models["for_speed"], x, args.steps)
    print(table.to_string(index=False), phases.to_string(index=False), layers.to_string(index=False), sep="\n\n")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    text = [
        "# Conv training step: layouts, and where the time goes (`benchmarks/conv_step.py`)\n",
        f"Fig. 4 conv VAE (latent 16, width 32), minibatch {args.batch_size} of MNIST, one thread; "
        f"{flops / 1e6:.2f} MFLOP per image forward + backward (FlopCounterMode over one step); "
        f"sgemm peak {peak:.1f} GFLOP/s (2048^3 mm, best of 5). Thread CPU seconds, best of {args.repeats} "
        f"interleaved rounds of {args.steps} steps.\n",
        markdown(table),
        f"\nEvaluation pass (`evaluate`, {args.eval_images} images, with reconstruction gains: "
        f"{(16 + 1) * args.eval_images} decoded images): contiguous {evals['contiguous']:.2f} s, "
        f"for_speed {evals['for_speed']:.2f} s ({evals['contiguous'] / evals['for_speed']:.2f}x).\n",
    ]
    if args.compile:
        text.append(
            f"\ntorch.compile (forward + loss, inductor): first step {c_cpu:.1f} s CPU in this process, "
            f"{c_wall:.0f} s wall (its compile workers' CPU not counted).\n"
        )
    text += [
        "\n## for_speed step under torch.profiler: forward, backward, optimizer (ms per step)\n",
        markdown(phases),
        "\n## per layer (ms per step; a layer's backward computes the weight gradient, and the input gradient "
        "except for the first)\n",
        markdown(layers),
        f"\ntorch {torch.__version__}; {os.cpu_count()} CPU cores, load average {load} at the end.\n",
    ]
    out.with_suffix(".md").write_text("".join(text))
    print(f"wrote {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
