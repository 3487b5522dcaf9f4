"""FID-proxy: how good a VAE's random generations are (the paper's Sec. 6.1 "quality of generated samples").

The usual FID (Heusel et al. 2017, the paper's ref. [13]) is the Fréchet distance between two
Gaussians fitted to Inception-v3 features of real and generated images,

    d^2 = ||m_r - m_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)).

Inception cannot be downloaded offline and is a poor judge of 28x28 digits, so, as the MNIST-scale
literature does, the features here are the penultimate activations of a small CNN classifier trained
on the same data set. The distance itself is torchmetrics' ``FrechetInceptionDistance`` with that
network as its custom feature extractor.

This module owns:

- ``FeatureNet``: the classifier; its ``forward`` returns the features;
- ``feature_net(data)``: trained once per data set and recipe, cached on disk keyed by the data set's
  content hash (a file lock lets only one of many concurrent trial processes train it; the file is
  written atomically), with its test accuracy recorded beside the weights;
- ``FidScorer``: real-image features computed once, any number of image sets scored against them;
- ``generation_scores``: a trained VAE's ``fid_prior`` (z ~ N(0, I)), ``fid_recon`` (reconstructions)
  and ``fid_zeroed`` (prior codes with the inactive variables set to 0: the Fig. 3 check), and the
  mean pixel change that zeroing makes (``fid_zeroed_pixel_change``).

Scores are comparable only at the same number of images and the same feature network (the Fréchet
distance of finite samples is biased upward by roughly 1/N).
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from filelock import FileLock
from torch import nn

from vaesweep.engine.data import (  # the one cache root: feature nets live in it
    CACHE_ENV,
    DataError,
    ImageData,
    cache_dir,
    make_cache,
)
from vaesweep.engine.models import eval_mode
from vaesweep.engine.sampling import decode_images, prior_codes, zero_inactive

Progress = Callable[[str], None]


def _stderr(line: str) -> None:
    print(f"vaesweep fid: {line}", file=sys.stderr, flush=True)


# --- the feature network ------------------------------------------------------------------------


class FeatureNet(nn.Module):
    """A small CNN classifier for C x 28 x 28 or C x 32 x 32 images in [0, 1].

    Three 3x3 conv + BatchNorm + ReLU + 2x2 max-pool stages (28-14-7-3), then a ``num_features``
    wide ReLU layer: its activations are the FID features. ``logits`` adds dropout and the class layer.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_classes: int,
        widths: tuple[int, ...] = (8, 16, 32),
        num_features: int = 128,
        dropout: float = 0.3,
    ):
        super().__init__()
        c, size, _ = in_shape
        layers: list[nn.Module] = []
        for a, b in zip((c, *widths[:-1]), widths):
            layers += [nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2)]
            size //= 2
        self.body = nn.Sequential(*layers, nn.Flatten(), nn.Linear(widths[-1] * size * size, num_features), nn.ReLU())
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(num_features, n_classes))
        self.num_features = num_features  # torchmetrics reads it instead of probing with a dummy image

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@dataclass(frozen=True)
class Recipe:
    """How a feature network is trained; part of its cache key, so changing it retrains."""

    epochs: int = 12
    batch_size: int = 128
    lr: float = 4e-3
    weight_decay: float = 1e-4
    widths: tuple[int, ...] = (8, 16, 32)
    num_features: int = 128
    rotate_deg: float = 10.0  # light augmentation: random rotation, scale and shift
    scale: float = 0.1
    shift_px: float = 2.0
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(repr(sorted(asdict(self).items())).encode()).hexdigest()[:8]


@dataclass
class TrainedFeatureNet:
    """A feature network and what is known about it (``meta``: test_accuracy, seconds, ...)."""

    net: FeatureNet
    meta: dict
    path: Path

    @property
    def test_accuracy(self) -> float:
        return self.meta["test_accuracy"]


def augment(x: torch.Tensor, recipe: Recipe, gen: torch.Generator) -> torch.Tensor:
    """Random small rotation, scale and shift of every image (one batched affine warp)."""
    n, device = len(x), x.device
    u = lambda *s: torch.rand(*s, generator=gen, device=device) * 2 - 1  # noqa: E731  U(-1, 1)
    angle = u(n) * math.radians(recipe.rotate_deg)
    scale = 1 + u(n) * recipe.scale
    shift = u(n, 2) * (2 * recipe.shift_px / x.shape[-1])  # affine_grid coordinates span [-1, 1]
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, padding_mode="border", align_corners=False)


def has_labels(data: ImageData) -> bool:
    return data.train_labels is not None and data.eval_labels is not None


@torch.no_grad()
def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000) -> float:
    with eval_mode(net):
        hits = sum(
            (net.logits(x[i : i + batch_size]).argmax(1) == y[i : i + batch_size]).sum()
            for i in range(0, len(x), batch_size)
        )
    return float(hits) / len(x)


def train_feature_net(
    data: ImageData, recipe: Recipe = Recipe(), progress: Progress | None = _stderr
) -> tuple[FeatureNet, dict]:
    """Train the classifier on the train split (cross-entropy, AdamW, one-cycle LR); test on eval.

    Seeded by ``recipe.seed`` inside a forked RNG, so the caller's random state is untouched.
    """
    if not has_labels(data):
        raise DataError(
            f"dataset '{data.name}' has no labels, which the FID-proxy needs to train its feature "
            "network; save them as key 'y' in the npz file, or set fid: false"
        )
    x, y, device = data.train, data.train_labels, data.train.device
    n_classes = int(max(y.max(), data.eval_labels.max())) + 1
    t0 = time.perf_counter()
    with torch.random.fork_rng(devices=[]):  # dropout draws from the global RNG
        torch.manual_seed(recipe.seed)
        net = FeatureNet(data.shape, n_classes, recipe.widths, recipe.num_features).to(device)
        gen = torch.Generator(device).manual_seed(recipe.seed)
        opt = torch.optim.AdamW(net.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
        steps_per_epoch = math.ceil(len(x) / recipe.batch_size)
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, recipe.lr, total_steps=recipe.epochs * steps_per_epoch)
        for epoch in range(1, recipe.epochs + 1):
            net.train()
            order = torch.randperm(len(x), generator=gen, device=device)
            total = torch.zeros((), device=device)
            for start in range(0, len(x), recipe.batch_size):
                idx = order[start : start + recipe.batch_size]
                loss = F.cross_entropy(net.logits(augment(x[idx], recipe, gen)), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                total += loss.detach() * len(idx)
            if progress is not None:
                acc = accuracy(net, data.eval, data.eval_labels)
                progress(
                    f"feature network epoch {epoch}/{recipe.epochs}: train loss {float(total) / len(x):.4f}, "
                    f"test accuracy {acc:.2%} ({time.perf_counter() - t0:.0f}s)"
                )
    net.eval()
    meta = {
        "dataset": data.name,
        "content_hash": data.content_hash,
        "recipe": asdict(recipe),
        "recipe_key": recipe.key(),
        "n_classes": n_classes,
        "n_train": len(x),
        "n_test": len(data.eval),
        "test_accuracy": accuracy(net, data.eval, data.eval_labels),
        "train_seconds": time.perf_counter() - t0,
        "torch": str(torch.__version__),
    }
    return net, meta


def feature_net(
    data: ImageData, cache: str | Path | None = None, recipe: Recipe = Recipe(), progress: Progress | None = _stderr
) -> TrainedFeatureNet:
    """The data set's feature network: loaded from the cache, else trained once and cached.

    The file is ``<cache>/fidnet-<content hash>-<recipe key>.pt``. Concurrent callers (Ray trials)
    serialise on a file lock; the first trains and writes atomically, the rest load its file.
    """

    folder = make_cache(cache_dir(cache), "cache_dir", f"set cache_dir or ${CACHE_ENV} to a writable folder")
    path = folder / f"fidnet-{data.content_hash}-{recipe.key()}.pt"
    loaded = _load(path, data, recipe)
    if loaded is None:
        with FileLock(f"{path}.lock"):
            loaded = _load(path, data, recipe)  # somebody may have trained it while we waited
            if loaded is None:  # missing, or unreadable / from another version: (re)train
                if progress is not None:
                    progress(
                        f"training the feature network of '{data.name}' once ({len(data.train)} images); "
                        f"it will be cached as {path}"
                    )
                net, meta = train_feature_net(data, recipe, progress)
                _save_atomic({"state_dict": {k: v.cpu() for k, v in net.state_dict().items()}, "meta": meta}, path)
                if progress is not None:
                    progress(
                        f"feature network test accuracy {meta['test_accuracy']:.2%} "
                        f"({meta['train_seconds']:.0f}s to train)"
                    )
                loaded = _load(path, data, recipe)
    net, meta = loaded
    return TrainedFeatureNet(net.eval().to(data.train.device), meta, path)


def _load(path: Path, data: ImageData, recipe: Recipe):
    """(net, meta) from a cache file, or None when it is missing or does not fit this code."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
        net = FeatureNet(data.shape, saved["meta"]["n_classes"], recipe.widths, recipe.num_features)
        net.load_state_dict(saved["state_dict"])
        return net, saved["meta"]
    except (OSError, KeyError, RuntimeError, EOFError, pickle.UnpicklingError):
        return None


def _save_atomic(obj, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache may be shared by a cluster's users
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# --- the Fréchet distance -----------------------------------------------------------------------


class _Frozen(nn.Module):
    """The feature network as torchmetrics' feature extractor: always in eval mode, no gradients."""

    def __init__(self, net: FeatureNet):
        super().__init__()
        self.net = net.eval().requires_grad_(False)
        self.num_features = net.num_features

    def train(self, mode: bool = True) -> _Frozen:
        return super().train(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class FidScorer:
    """Fréchet distances to one fixed set of real images, whose features are computed once."""

    def __init__(self, net: FeatureNet, real: torch.Tensor, batch_size: int = 500):
        from torchmetrics.image.fid import FrechetInceptionDistance

        if len(real) < 2:
            raise ValueError("the FID-proxy needs at least 2 real images")
        self.real, self.batch_size = real, batch_size
        self.metric = FrechetInceptionDistance(feature=_Frozen(net), reset_real_features=False, normalize=True)
        self.metric.to(real.device)
        self._update(real, real=True)

    def _update(self, images: torch.Tensor, real: bool) -> None:
        for i in range(0, len(images), self.batch_size):
            self.metric.update(images[i : i + self.batch_size], real=real)

    def score(self, images: torch.Tensor) -> float:
        """d^2 between the real images and ``images`` (N, C, H, W) in [0, 1], N >= 2."""
        if len(images) < 2:
            raise ValueError("the FID-proxy needs at least 2 generated images")
        self.metric.reset()  # keeps the real features (reset_real_features=False)
        self._update(images.clamp(0, 1), real=False)
        return float(self.metric.compute())


def trial_scores(data: ImageData, cfg, model, active: list[bool], seed: int, scorer=None) -> tuple[dict, object]:
    """A trial's FID-proxy scores (fid_prior, fid_recon, fid_zeroed, fid_zeroed_pixel_change, fid_seconds,
    fid_net_accuracy) and the (scorer, feature net) pair to reuse next time; no scores, with a warning, for
    unlabelled data."""
    if not has_labels(data):
        warnings.warn(
            f"fid: dataset '{data.name}' has no labels to train the FID-proxy's feature "
            "network; no fid_* scores (save labels as key 'y' in the npz, or set fid: false)",
            stacklevel=2,
        )
        return {}, scorer
    if scorer is None:
        scorer = scorer_for(data, cfg.fid_samples, cfg.cache_dir)
    fid, trained = scorer
    return {**generation_scores(model, fid, active, seed), "fid_net_accuracy": trained.test_accuracy}, scorer


def scorer_for(
    data: ImageData, n: int, cache: str | Path | None = None, progress: Progress | None = _stderr
) -> tuple[FidScorer, TrainedFeatureNet]:
    """A scorer against the first ``n`` eval images (capped at the eval split) of ``data``."""
    trained = feature_net(data, cache, progress=progress)
    return FidScorer(trained.net, data.eval[:n]), trained


@torch.no_grad()
def reconstructions(model, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Mean reconstructions sigmoid(d(mu(X))) in [0, 1], with the model in eval mode."""
    with eval_mode(model):
        return torch.cat(
            [torch.sigmoid(model.decode(model.encode(x[i : i + batch_size])[0])) for i in range(0, len(x), batch_size)]
        )


def generation_scores(model, scorer: FidScorer, active: list[bool], seed: int) -> dict:
    """``fid_prior``, ``fid_recon``, ``fid_zeroed`` of a VAE against the scorer's N real images,
    ``fid_zeroed_pixel_change`` and ``fid_seconds``, what they cost.

    N prior codes come from ``seed`` (the same z every call); ``fid_recon`` scores the mean
    reconstructions of the real images themselves; ``fid_zeroed`` decodes the prior codes with every
    inactive variable set to 0 (Fig. 3: close to ``fid_prior`` when those are truly unused).
    ``fid_zeroed_pixel_change`` compares the two image sets directly: the mean absolute change of a
    pixel (images in [0, 1]) between each prior sample and the same sample with the inactive variables
    zeroed (Fig. 3: "indistinguishable" means close to 0).
    """
    t0 = time.perf_counter()
    real = scorer.real
    z = prior_codes(len(real), model.latent_dim, seed, real.device)
    prior, zeroed = decode_images(model, z), decode_images(model, zero_inactive(z, active))
    out = {
        "fid_prior": scorer.score(prior),
        "fid_recon": scorer.score(reconstructions(model, real)),
        "fid_zeroed": scorer.score(zeroed),
        "fid_zeroed_pixel_change": float((prior - zeroed).abs().mean()),
    }
    out["fid_seconds"] = time.perf_counter() - t0
    return out
