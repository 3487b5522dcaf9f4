"""Throughput of a study's trials, four ways, on the same configurations (issues 9, 15).

    python benchmarks/throughput.py                       # CPU, and the GPU when one is present
    python benchmarks/throughput.py --device cpu --epochs 3 --configs 8 --out benchmarks/results/cpu

(a) ``plain``: the loop a user would write, in the style of pytorch/examples' VAE (mnist/main.py):
    a DataLoader over a TensorDataset, one model per run, ``loss.item()`` every batch, a test pass
    every epoch; the same 784-256-64-32-16 network and lambda (beta) weighting the KL term;
(b) ``trial``: vaesweep's trial function (``train_vae``) one configuration at a time: data on the
    device, collapse metrics at the default ``eval_every`` (epochs 1 and 3 of 3) with reconstruction gains
    at the end (each call loads the data set, as a fresh Ray worker does);
(c) ``packed``: ``vaesweep.engine.packing.PackedRun``, all configurations in one set of batched kernels,
    with the same per-configuration metrics as (b);
(d) ``trial_loop``: (b)'s training loop alone (``TrialRun.train_epoch``; data loaded, no metrics): the
    plain-equivalent loop of vaesweep;
(e) ``--arch conv`` only, ``trial_loop_contiguous``: (d) with ``memory_format: contiguous``, the conv layout
    before issue 24 (``auto`` is channels_last on a CPU), timed in the same run.

``--arch conv`` runs the same on the conv net of Fig. 4 (``vaesweep.engine.models.ConvVAE``); its plain loop
is (a)'s loop around that model (Bernoulli logits, ``binary_cross_entropy_with_logits``), as built.

Each method's ``peak_share`` is its training arithmetic (images/s x the VAE's FLOPs per image, forward +
backward: dense counted from the layer widths, conv by ``torch.utils.flop_counter.FlopCounterMode`` over one
training step of the model's own layers) over this machine's sgemm peak at the same thread
count (a timed 2048^3 ``torch.mm``, best of 5): what share of the arithmetic limit each reaches.

Prints images/second (training images through forward and backward), trial-epochs/second and
each method's ratio to (a), each the best of ``--repeats`` interleaved runs (``--clock cpu``: process CPU
seconds instead of wall seconds, for a machine other jobs load; on CPU only); writes the table as
CSV and Markdown to ``--out`` (.csv / .md added).
The FID-proxy is off (``fid: false``): it is the same cost either way and not training.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from vaesweep import TrialConfig, load_dataset, train_vae
from vaesweep.engine.models import build_model
from vaesweep.engine.packing import train_packed
from vaesweep.engine.trial import TrialRun


# --- (a) the pytorch/examples-style reference ---------------------------------------------------
class VAE(nn.Module):
    """pytorch/examples' mnist VAE, with the paper's dense widths instead of 784-400-20."""

    def __init__(self, hidden=(256, 64, 32), latent=16):
        super().__init__()
        widths = (784, *hidden)
        self.enc = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))
        self.fc_mu, self.fc_logvar = nn.Linear(widths[-1], latent), nn.Linear(widths[-1], latent)
        back = (latent, *reversed(widths))
        self.dec = nn.ModuleList(nn.Linear(a, b) for a, b in zip(back[:-1], back[1:]))

    def encode(self, x):
        h = x
        for layer in self.enc:
            h = F.relu(layer(h))
        return self.fc_mu(h), self.fc_logvar(h)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h = z
        for layer in self.dec[:-1]:
            h = F.relu(layer(h))
        return torch.sigmoid(self.dec[-1](h))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def dense_loss_function(recon_x, x, mu, logvar, beta):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + beta * kld


class ConvExample(nn.Module):
    """(a)'s interface around vaesweep's Fig. 4 conv net, as built: forward gives logits, mu, logvar."""

    def __init__(self, cfg: TrialConfig, shape: tuple[int, int, int]):
        super().__init__()
        self.net = build_model("conv", shape, cfg.latent_dim, conv_width=cfg.conv_width)

    def forward(self, x):
        mu, logvar = self.net.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.net.decode(z), mu, logvar


def conv_loss_function(logits, x, mu, logvar, beta):
    bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + beta * kld


def plain_run(cfg: TrialConfig, x_train: torch.Tensor, x_test: torch.Tensor, device: torch.device) -> None:
    torch.manual_seed(cfg.seed)
    train_loader = DataLoader(TensorDataset(x_train), batch_size=cfg.batch_size, shuffle=True)
    test_loader = DataLoader(TensorDataset(x_test), batch_size=cfg.batch_size, shuffle=False)
    conv = cfg.arch == "conv"
    model = (ConvExample(cfg, tuple(x_train.shape[1:])) if conv else VAE(cfg.hidden, cfg.latent_dim)).to(device)
    loss_function = conv_loss_function if conv else dense_loss_function
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    for _epoch in range(cfg.epochs):
        model.train()
        train_loss = 0.0
        for (data,) in train_loader:
            data = data.to(device)
            optimizer.zero_grad()
            recon_batch, mu, logvar = model(data)
            loss = loss_function(recon_batch, data, mu, logvar, cfg.lam)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        model.eval()
        test_loss = 0.0
        with torch.no_grad():
            for (data,) in test_loader:
                data = data.to(device)
                recon_batch, mu, logvar = model(data)
                test_loss += loss_function(recon_batch, data, mu, logvar, cfg.lam).item()


# --- the three methods, timed ------------------------------------------------------------------
def configs(n: int, epochs: int, device: str, args) -> list[TrialConfig]:
    """n lambdas, log-spaced over [0.25, 4], of the latent-16 ``--arch`` network (seeds 0..n-1)."""
    lams = torch.logspace(-2, 2, n, base=2.0).tolist() if n > 1 else [1.0]
    return [
        TrialConfig(
            arch=args.arch,
            latent_dim=args.latent_dim,
            lam=lam,
            seed=i,
            epochs=epochs,
            device=device,
            threads=args.threads,
            max_train=args.max_train,
            max_eval=args.max_eval,
            batch_size=args.batch_size,
            fid=False,
            gain_every=args.gain_every,
        )
        for i, lam in enumerate(lams)
    ]


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
clock = CLOCKS["wall"]  # --clock: cpu counts this process's CPU seconds, steadier on a shared machine


def sgemm_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """This machine's float32 matmul peak at the current thread count: the best of ``repeats`` n^3 mm."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = clock()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, clock() - t0)
    return 2 * n**3 / best / 1e9


def dense_flops_per_image(cfg: TrialConfig, pixels: int = 784) -> int:
    """FLOPs of one training image through the dense VAE: 2 * in * out per Linear forward (encoder, the
    mu and logvar heads, decoder), x3 for forward + backward (the usual count; the first layer's input
    gradient is never computed, so the arithmetic done is 2 * 784 * hidden[0] less)."""
    widths = (pixels, *cfg.hidden)
    encoder = sum(a * b for a, b in zip(widths[:-1], widths[1:])) + 2 * widths[-1] * cfg.latent_dim
    back = (cfg.latent_dim, *reversed(widths))
    decoder = sum(a * b for a, b in zip(back[:-1], back[1:]))
    return 3 * 2 * (encoder + decoder)


def conv_flops_per_image(cfg: TrialConfig, shape: tuple[int, int, int]) -> float:
    """FLOPs of one training image through the conv VAE, forward + backward, counted by torch's FlopCounterMode
    over one training step (a minibatch of ``batch_size``) of the model's own layers."""
    x = torch.rand(cfg.batch_size, *shape)
    model = build_model("conv", shape, cfg.latent_dim, conv_width=cfg.conv_width)
    with FlopCounterMode(display=False) as counter:
        mu, logvar = model.encode(x)
        conv_loss_function(model.decode(mu + logvar.exp()), x, mu, logvar, cfg.lam).backward()
    return counter.get_total_flops() / cfg.batch_size


def run_method(method: str, cfgs: list[TrialConfig], device: torch.device) -> None:
    if method == "plain":
        data = load_dataset(cfgs[0].dataset)  # on the host: the DataLoader's side of the copy
        x_train, x_test = data.train[: cfgs[0].max_train], data.eval[: cfgs[0].max_eval]
        for cfg in cfgs:
            plain_run(cfg, x_train, x_test, device)
    elif method == "trial":
        for cfg in cfgs:
            train_vae(cfg)
    else:
        train_packed(cfgs)


def timed(method: str, cfgs: list[TrialConfig], device: torch.device) -> float:
    """Wall seconds of one method; (d) ``trial_loop`` times its training epochs only."""
    if method == "trial_loop":
        return timed_loops(cfgs, device)
    if method == "trial_loop_contiguous":
        return timed_loops([c.model_copy(update={"memory_format": "contiguous"}) for c in cfgs], device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = clock()
    run_method(method, cfgs, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return clock() - t0


def timed_loops(cfgs: list[TrialConfig], device: torch.device) -> float:
    """(d): the seconds of each configuration's ``TrialRun.train_epoch`` calls, summed (no set-up, no metrics)."""
    seconds = 0.0
    for cfg in cfgs:
        run = TrialRun(cfg)
        for _ in range(cfg.epochs):
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = clock()
            run.train_epoch()
            if device.type == "cuda":
                torch.cuda.synchronize()
            seconds += clock() - t0
    return seconds


def benchmark(device_name: str, args) -> list[dict]:
    device = torch.device(device_name)
    cfgs = configs(args.configs, args.epochs, device_name, args)
    n_train = min(args.max_train or 10**9, len(load_dataset(cfgs[0].dataset).train))
    warm = [c.model_copy(update={"epochs": 1, "max_train": 256, "max_eval": 128}) for c in cfgs[:2]]
    methods = ("plain", "trial", "packed", "trial_loop") + (("trial_loop_contiguous",) if args.arch == "conv" else ())
    for method in methods:
        timed(method, warm, device)  # one-time costs (allocator, kernels, CUDA context) out of the timing
    best = {m: float("inf") for m in methods}
    for r in range(args.repeats):  # interleaved, best of: the machine's other load only ever adds time
        for method in methods:
            seconds = timed(method, cfgs, device)
            best[method] = min(best[method], seconds)
            print(f"  {device_name} {method:7s} run {r + 1}: {seconds:8.2f} s", flush=True)
    peak = sgemm_gflops(device)
    shape = load_dataset(cfgs[0].dataset).shape
    flops = dense_flops_per_image(cfgs[0]) if args.arch == "dense" else conv_flops_per_image(cfgs[0], shape)
    print(f"  {device_name} sgemm peak {peak:.1f} GFLOP/s; {args.arch} VAE {flops / 1e6:.2f} MFLOP per training image")
    rows, trial_epochs = [], len(cfgs) * args.epochs
    for method, seconds in best.items():
        images_per_s = trial_epochs * n_train / seconds
        rows.append(
            {
                "device": device_name,
                "arch": args.arch,
                "method": method,
                "configs": len(cfgs),
                "epochs": args.epochs,
                "train_images": n_train,
                "threads": args.threads,
                "seconds": round(seconds, 3),
                "images_per_s": round(images_per_s, 1),
                "trial_epochs_per_s": round(trial_epochs / seconds, 3),
                "mflop_per_image": round(flops / 1e6, 3),
                "sgemm_gflops": round(peak, 1),
                "peak_share": round(images_per_s * flops / (peak * 1e9), 3),
            }
        )
    plain = rows[0]["seconds"]
    for r in rows:
        r["speedup_vs_plain"] = round(plain / r["seconds"], 2)
    return rows


def markdown(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="all", help="cpu, cuda, or all (cpu, and cuda when present)")
    p.add_argument("--arch", choices=["dense", "conv"], default="dense", help="the network every method trains")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--configs", type=int, default=8, help="configurations (lambdas) trained each way")
    p.add_argument("--latent-dim", type=int, default=16)
    p.add_argument("--max-train", type=int, default=4000, help="training images (mnist5k has 4,000)")
    p.add_argument("--max-eval", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--gain-every", type=int, default=10, help="trial/packed: reconstruction gains every N epochs")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per method (interleaved); the best is kept")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall", help="cpu: process CPU seconds (CPU only)")
    p.add_argument("--out", default="benchmarks/results/throughput", help="table path; .csv and .md are added")
    args = p.parse_args(argv)
    global clock
    clock = CLOCKS[args.clock]
    torch.set_num_threads(args.threads)
    devices = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])] if args.device == "all" else [args.device]
    if "cuda" in devices and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA GPU is visible; use --device cpu")
    if args.clock == "cpu" and devices != ["cpu"]:
        p.error("--clock cpu: CPU seconds do not time a GPU; use --device cpu or --clock wall")
    rows = [r for d in devices for r in benchmark(d, args)]
    table = pd.DataFrame(rows)
    name = torch.cuda.get_device_name() if "cuda" in devices else None
    print(table.to_string(index=False))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(out.with_suffix(".csv"), index=False)
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    note = (
        f"torch {torch.__version__}; {os.cpu_count()} CPU cores, load average {load} at the end; "
        f"torch threads {args.threads}; {args.clock} clock" + (f"; GPU {name}" if name else "; no GPU")
    )
    out.with_suffix(".md").write_text(markdown(table) + f"\n{note}\n")
    print(f"wrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
