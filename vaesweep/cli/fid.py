"""The ``fid`` command of the CLI: the FID-proxy (vaesweep/engine/fid.py) between two image sets.

    python -m vaesweep fid samples.npz                 # an npz of images against the eval split
    python -m vaesweep fid a.npz b.npz                 # any two image sets
    python -m vaesweep fid runs/x/model.pt             # a trained trial: fid_prior, fid_recon, fid_zeroed
    python -m vaesweep fid runs/x/model.pt other.npz   # a trial's prior samples against other images

A source is an ``.npz`` file (N x H x W or N x C x H x W, uint8 or float in [0, 1]; the format of
``dataset: npz:PATH``), a trained trial (``model.pt`` from ``train --out``, a Ray checkpoint's
``trial.pt``, or a folder holding one: its prior samples), or ``eval`` / ``train`` (the data set's
splits). The feature network is that of ``--dataset`` (default: the trial's data set, else mnist5k).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from vaesweep.config.errors import UsageError
from vaesweep.engine.checkpoints import CHECKPOINT_FILE, MODEL_FILE, build_trained, load_trained, trained_file_in
from vaesweep.engine.data import _npz, check_dataset_name, load_dataset
from vaesweep.engine.fid import FidScorer, feature_net, generation_scores, scorer_for
from vaesweep.engine.latents import evaluate
from vaesweep.engine.sampling import decode_images, prior_codes

SPLITS = ("eval", "train")


def _load_trial(path: Path):
    """(TrialConfig, weights) of a trained trial (vaesweep.engine.checkpoints.load_trained)."""
    try:
        return load_trained(path)
    except ValueError as err:
        raise UsageError(str(err)) from None


def _images(source: str, data, n: int, seed: int, trials: dict) -> torch.Tensor:
    """The first ``n`` images of a source, (N, C, H, W) float in [0, 1]."""
    if source in SPLITS and not Path(source).exists():
        images = getattr(data, source)
    elif source in trials:
        cfg, weights = trials[source]
        model = build_trained(cfg, weights, data.shape)
        images = decode_images(model, prior_codes(n, cfg.latent_dim, seed))
    elif Path(source).suffix == ".npz":
        if not Path(source).is_file():
            raise UsageError(f"image file '{source}' not found; give an existing .npz file")
        array, _ = _npz(Path(source))
        images = torch.from_numpy(
            array.astype(np.float32) / 255.0 if array.dtype == np.uint8 else array.astype(np.float32)
        )
    else:
        raise UsageError(
            f"'{source}' is not an .npz file, a trial checkpoint ({MODEL_FILE}, {CHECKPOINT_FILE} or a "
            f"folder holding one), 'eval' or 'train'; give one of those"
        )
    if tuple(images.shape[1:]) != tuple(data.shape):
        raise UsageError(
            f"'{source}' holds {'x'.join(map(str, images.shape[1:]))} images but the feature network "
            f"of '{data.name}' takes {'x'.join(map(str, data.shape))}; pick the matching --dataset"
        )
    if len(images) < 2:
        raise UsageError(f"'{source}' holds {len(images)} image(s); the FID-proxy needs at least 2")
    return images[:n]


def _trial_scores(cfg, weights, data, n: int, seed: int, cache: str | None) -> dict:
    """The three per-trial scores, computed exactly as at the end of the trial (vaesweep/engine/trial.py)."""
    model = build_trained(cfg, weights, data.shape)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    x = data.eval[: cfg.max_eval]
    final = evaluate(model, x, cfg.recon_loss, cfg.tolerances, gen, with_gain=False, mi_images=0)
    scorer, trained = scorer_for(data, n, cache)
    active = [r["active"] for r in final["latents"]]
    return {
        **generation_scores(model, scorer, active, seed),
        "n_active": final["summary"]["n_active"],
        "n_real": len(scorer.real),
        "fid_net_accuracy": trained.test_accuracy,
    }


def cmd_fid(args: argparse.Namespace) -> int:
    if args.n < 2:
        raise UsageError(f"--n {args.n}: the FID-proxy needs at least 2 images per set; give --n 1000")
    if args.threads:
        torch.set_num_threads(args.threads)
    sources = [s for s in (args.a, args.b) if s is not None]
    trials = {s: _load_trial(p) for s in sources if (p := trained_file_in(s)) is not None}
    first_cfg = next(iter(trials.values()))[0] if trials else None
    dataset = args.dataset or (first_cfg.dataset if first_cfg else "mnist5k")
    data_root = args.data_root or (first_cfg.data_root if first_cfg else None)
    try:
        check_dataset_name(dataset)
    except ValueError as err:
        raise UsageError(f"--dataset: {err}") from None
    data = load_dataset(dataset, data_root, cache=args.cache_dir)
    t0 = time.perf_counter()
    if args.b is None and args.a in trials:  # a trial alone: its three scores, as in the trial
        cfg, weights = trials[args.a]
        seed = cfg.seed if args.seed is None else args.seed
        out = _trial_scores(cfg, weights, data, args.n, seed, args.cache_dir)
    else:
        seed = 0 if args.seed is None else args.seed
        fake = _images(args.a, data, args.n, seed, trials)
        real = _images(args.b or "eval", data, args.n, seed, trials)
        trained = feature_net(data, args.cache_dir)
        out = {
            "fid": FidScorer(trained.net, real).score(fake),
            "n_a": len(fake),
            "n_b": len(real),
            "fid_net_accuracy": trained.test_accuracy,
        }
    out.update(dataset=dataset, seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>17}: {v:.6g}" if isinstance(v, float) else f"{k:>17}: {v}")
    return 0
