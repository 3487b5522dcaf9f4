"""What the mutual information and the importance-weighted NLL cost, and how noisy they are (issue 26).

    nice -n 15 env PYTHONPATH=$PWD python benchmarks/information.py --epochs 5

writes benchmarks/results/information.md. On full MNIST (60,000 training images, the 10,000-image eval split),
for the dense network of Table 1 at latent 16 and 64 (lambda 1, seed 0, ``--epochs`` epochs, one thread):

- cost: CPU seconds (``time.process_time``, one torch thread: the machine is shared) of one evaluation
  (vaesweep.engine.latents.evaluate on the 10,000 eval images) without the MI (``mi_images: 0``, the evaluation
  before issue 26) and with it (``mi_images: 1000``, the default), with and without the reconstruction gains;
  the two interleaved, ``--reps`` times, minimum of each: the ratio is the cost;
- sampling error: the joint and per-variable MI over ``--draws`` draws of the one code per image (the sampling
  noise) and over disjoint 1,000-image subsets of the eval split (the choice of images);
- the ceiling: the joint MI on N = 500 ... 10,000 images against log N;
- nll_iw against K (1 = -ELBO on those images, 10, 100, 1000) on the first 1,000 eval images, and its CPU seconds.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch

from vaesweep.config.trial import TrialConfig
from vaesweep.engine.information import importance_weighted_nll, mutual_information
from vaesweep.engine.latents import encode_all, evaluate
from vaesweep.engine.models import reparameterize
from vaesweep.engine.trial import TrialRun

RESULTS = Path(__file__).resolve().parent / "results"


def _floats(values, digits: int) -> str:
    return ", ".join(f"{float(v):.{digits}f}" for v in values)


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def measure(latent: int, epochs: int, reps: int, draws: int) -> list[str]:
    cfg = TrialConfig(
        dataset="mnist", latent_dim=latent, epochs=epochs, fid=False, threads=1, iw_samples=0, eval_every=epochs
    )
    run = TrialRun(cfg)
    t0 = time.process_time()
    for _ in run.epochs():
        pass
    train_s = time.process_time() - t0
    model, x, tol = run.model.eval(), run.x_eval, cfg.tolerances
    s = run.result().summary
    lines = [
        f"### dense, latent {latent}, lambda 1, {epochs} epochs ({train_s:.0f} CPU s of training)",
        "",
        f"n_active {s['n_active']}, KL {s['kl']:.2f} nats, ELBO {s['elbo']:.2f}, mi {s['mi']:.3f} "
        f"(log 1000 = {math.log(1000):.3f}), settled {s['settled']}.",
        "",
        "| evaluation of 10,000 images | without MI (CPU s) | with MI on 1,000 (CPU s) | ratio |",
        "| --- | --- | --- | --- |",
    ]
    for gain in (False, True):
        times = {0: [], 1000: []}
        for _ in range(reps if not gain else max(1, reps // 3)):
            for n in (0, 1000):
                gen = torch.Generator().manual_seed(1)
                times[n].append(cpu_seconds(lambda n=n, g=gen, w=gain: evaluate(model, x, "bce", tol, g, w, n)))
        a, b = min(times[0]), min(times[1000])
        what = "with reconstruction gains (every gain_every epochs, final)" if gain else "every evaluation"
        lines.append(f"| {what} | {a:.3f} | {b:.3f} | {b / a:.3f} |")
    mu, logvar = encode_all(model, x)
    joint, per_var = [], []
    for d in range(draws):
        z = reparameterize(mu, logvar, torch.randn(mu.shape, generator=torch.Generator().manual_seed(100 + d)))
        j, p = mutual_information(mu[:1000], logvar[:1000], z[:1000])
        joint.append(float(j))
        per_var.append(p.numpy())
    subsets_j, subsets_p = [], []
    z = reparameterize(mu, logvar, torch.randn(mu.shape, generator=torch.Generator().manual_seed(7)))
    for s in range(0, len(x), 1000):
        j, p = mutual_information(mu[s : s + 1000], logvar[s : s + 1000], z[s : s + 1000])
        subsets_j.append(float(j))
        subsets_p.append(p.numpy())
    per_var, subsets_p = np.array(per_var), np.array(subsets_p)
    active = np.array([r["active"] for r in run.result().latents])
    lines += [
        "",
        f"Sampling error of mi on 1,000 images: {draws} draws of the codes: mean {np.mean(joint):.3f}, sd "
        f"{np.std(joint, ddof=1):.4f}; {len(subsets_j)} disjoint 1,000-image subsets: mean {np.mean(subsets_j):.3f}, "
        f"sd {np.std(subsets_j, ddof=1):.4f}.",
        "",
        f"mi_i, active variables ({active.sum()}): values {_floats(np.mean(subsets_p[:, active], 0), 2)}; "
        f"sd over draws (median over variables) {np.median(np.std(per_var[:, active], 0, ddof=1)):.4f}, "
        f"over subsets {np.median(np.std(subsets_p[:, active], 0, ddof=1)):.4f}.",
    ]
    if (~active).any():
        lines.append(
            f"mi_i, inactive variables ({(~active).sum()}): max |mi_i| {np.abs(subsets_p[:, ~active]).max():.4f} "
            f"over the subsets; their KL {_floats([r['kl'] for r in run.result().latents if not r['active']], 4)}."
        )
    lines += ["", "| N images | joint mi | log N |", "| --- | --- | --- |"]
    for n in (500, 1000, 2000, 5000, 10000):
        j, _ = mutual_information(mu[:n], logvar[:n], z[:n], per_variable=False)
        lines.append(f"| {n} | {float(j):.3f} | {math.log(n):.3f} |")
    lines += ["", "| K | nll_iw on 1,000 images | CPU s |", "| --- | --- | --- |"]
    for k in (1, 10, 100, 1000):
        gen = torch.Generator().manual_seed(2)
        out = {}
        sec = cpu_seconds(lambda k=k, g=gen, o=out: o.update(v=importance_weighted_nll(model, x[:1000], "bce", k, g)))
        lines.append(f"| {k} | {out['v']:.3f} | {sec:.2f} |")
    return lines + [""]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--draws", type=int, default=10)
    ap.add_argument("--latents", default="16,64")
    args = ap.parse_args()
    torch.set_num_threads(1)
    load = os.getloadavg()
    lines = [
        "# Mutual information and importance-weighted NLL: cost and sampling error",
        "",
        f"`benchmarks/information.py --epochs {args.epochs} --reps {args.reps} --draws {args.draws}` on "
        f"{platform.node()} ({os.cpu_count()} cores, shared; load average {load[0]:.1f} at the start), torch "
        f"{torch.__version__}, one torch thread, CPU seconds (time.process_time), minimum of the repetitions.",
        "",
    ]
    for latent in (int(v) for v in args.latents.split(",")):
        lines += measure(latent, args.epochs, args.reps, args.draws)
        print("\n".join(lines[-40:]), flush=True)
    lines.append(f"Load average at the end: {os.getloadavg()[0]:.1f}.")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "information.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print((RESULTS / "information.md").read_text())


if __name__ == "__main__":
    main()
