"""The VAE architectures of the paper: a dense MLP (Sec. 3, Table 1) and the conv net of Fig. 4.

Both expose the same three steps so training code can act on z between them (masking,
the noise experiment of Sec. 5):

    mu, logvar = model.encode(x)          # Q(z|X) = N(mu(X), sigma^2(X))
    z = reparameterize(mu, logvar, eps)   # the reparametrization trick
    logits = model.decode(z)              # Bernoulli logits; sigmoid(logits) is the mean image

The paper (Keras, 2019) leaves some choices unstated; each is an option here (``TrialConfig``: ``init``,
``bn_momentum``, ``bn_eps``, ``conv_relu``, ``conv_decoder``, or ``preset: keras2019``), so a collapse number
says what it depends on. ``model_for(cfg, shape)`` builds a trial's model with all of them.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from vaesweep.config.trial import TrialConfig


@contextmanager
def eval_mode(model: nn.Module):
    """Run a block with ``model`` in eval mode (BatchNorm on its running statistics), then restore."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """z = mu + sigma * eps, eps ~ N(0, I) (Kingma & Welling; Rezende et al.)."""
    return mu + torch.exp(0.5 * logvar) * eps


class DenseVAE(nn.Module):
    """784-256-64-32-16 style MLP VAE (the paper's Table 1 network); decoder mirrors encoder."""

    def __init__(self, in_shape: tuple[int, int, int], latent_dim: int, hidden: tuple[int, ...] = (256, 64, 32)):
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        n_in = math.prod(in_shape)
        enc = [nn.Flatten()]
        for a, b in zip((n_in, *hidden[:-1]), hidden):
            enc += [nn.Linear(a, b), nn.ReLU()]
        self.encoder = nn.Sequential(*enc)
        self.mu = nn.Linear(hidden[-1], latent_dim)
        self.logvar = nn.Linear(hidden[-1], latent_dim)
        dec, widths = [], (latent_dim, *reversed(hidden))
        for a, b in zip(widths[:-1], widths[1:]):
            dec += [nn.Linear(a, b), nn.ReLU()]
        dec += [nn.Linear(widths[-1], n_in), nn.Unflatten(1, self.in_shape)]
        self.decoder = nn.Sequential(*dec)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h), self.logvar(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def _same_conv2x2(channels: int) -> nn.Sequential:
    """Keras' 2x2 'same' conv: pad one row and column after the input, then a valid conv."""
    seq = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(channels, channels, 2, 1))
    seq.out_channels = channels
    return seq


def _block(convs: list[nn.Module], relu: str, bn: dict | None) -> list[nn.Module]:
    """A stack of convs closed by BatchNorm (``bn``: its momentum and eps; None: no BatchNorm) and a ReLU.
    ``relu``: "pairs" (Fig. 4 as drawn: one ReLU after the stack) or "every" (also a ReLU after each conv
    inside it, as a Keras Conv2D with ``activation='relu'`` would hide in the figure)."""
    layers: list[nn.Module] = []
    for i, conv in enumerate(convs):
        layers.append(conv)
        if relu == "every" and i < len(convs) - 1:
            layers.append(nn.ReLU())
    if bn is not None:
        layers.append(nn.BatchNorm2d(convs[-1].out_channels, **bn))
    return [*layers, nn.ReLU()]


class ConvVAE(nn.Module):
    """The convolutional VAE of Fig. 4: 3x3 conv stacks with BatchNorm + ReLU down to 1x1, two 1x1
    heads for mean and log-variance; the decoder is symmetric, upsampling with transposed convs.

    For 28x28 inputs the spatial sizes are 28-14-7-4-2-1 (as in Fig. 4), for 32x32 32-16-8-4-2-1.
    ``width`` is the channel count of the deeper layers (32 in the paper; the first layer has half).

    What Fig. 4 does not show, as options: ``relu`` "pairs" (a ReLU after each BatchNorm, as drawn) or "every"
    (also after the first conv of each pair and after the last 2x2 conv before the heads); ``decoder`` "bn"
    (transposed conv + conv pairs with BatchNorm) or "mirror" (the encoder mirrored with transposed convs, a ReLU
    after each but the output, no BatchNorm); ``bn``: BatchNorm's momentum and eps (PyTorch's convention).
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        latent_dim: int,
        width: int = 32,
        relu: str = "pairs",
        decoder: str = "bn",
        bn: dict | None = None,
    ):
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        c, size, _ = in_shape
        w, w0 = width, width // 2
        bn = bn or {}
        sizes = [size]  # spatial size after each stride-2 3x3 conv: 28 -> 14 -> 7 -> 4
        for _ in range(3):
            sizes.append((sizes[-1] - 1) // 2 + 1)
        if sizes[-1] != 4:
            raise ValueError(f"conv architecture needs 28x28 or 32x32 inputs, got {size}x{size}")
        self.encoder = nn.Sequential(  # Fig. 4 (layers built in its order: the same seed, the same weights)
            *_block([nn.Conv2d(c, w0, 3, 2, 1)], relu, bn),  # 14x14x16
            *_block([nn.Conv2d(w0, w, 3, 1, 1), nn.Conv2d(w, w, 3, 2, 1)], relu, bn),  # 7x7x32
            *_block([nn.Conv2d(w, w, 3, 2, 1), nn.Conv2d(w, w, 3, 1, 1)], relu, bn),  # 4x4x32
            *_block([nn.Conv2d(w, w, 2, 2), _same_conv2x2(w)], relu, bn),  # 2x2x32
            nn.Conv2d(w, w, 2, 1),  # 1x1x32
            *([nn.ReLU()] if relu == "every" else []),
        )
        self.mu = nn.Conv2d(w, latent_dim, 1)
        self.logvar = nn.Conv2d(w, latent_dim, 1)

        def up(cin: int, cout: int, target: int, src: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=target - (2 * src - 1))

        if decoder == "bn":
            layers = [
                *_block([nn.ConvTranspose2d(latent_dim, w, 2, 1)], "pairs", bn),  # 2x2
                *_block([nn.ConvTranspose2d(w, w, 2, 2), nn.Conv2d(w, w, 3, 1, 1)], "pairs", bn),  # 4x4
                *_block([up(w, w, sizes[2], 4), nn.Conv2d(w, w, 3, 1, 1)], "pairs", bn),  # 7x7
                *_block([up(w, w0, sizes[1], sizes[2]), nn.Conv2d(w0, w0, 3, 1, 1)], "pairs", bn),  # 14x14
                up(w0, w0, sizes[0], sizes[1]),
                nn.ReLU(),
                nn.Conv2d(w0, c, 3, 1, 1),  # 28x28 logits
            ]
        elif decoder == "mirror":  # the encoder's convs in reverse order, each a transposed conv
            convs = [
                nn.ConvTranspose2d(latent_dim, w, 2, 1),  # 2x2
                nn.ConvTranspose2d(w, w, 3, 1, 1),
                nn.ConvTranspose2d(w, w, 2, 2),  # 4x4
                nn.ConvTranspose2d(w, w, 3, 1, 1),
                up(w, w, sizes[2], 4),  # 7x7
                up(w, w, sizes[1], sizes[2]),  # 14x14
                nn.ConvTranspose2d(w, w0, 3, 1, 1),
            ]
            layers = [m for conv in convs for m in (conv, nn.ReLU())] + [up(w0, c, sizes[0], sizes[1])]  # logits
        else:
            raise ValueError(f"unknown conv decoder '{decoder}'; use 'bn' or 'mirror'")
        self.decoder = nn.Sequential(nn.Unflatten(1, (latent_dim, 1, 1)), *layers)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h).flatten(1), self.logvar(h).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


INITS = ("torch", "keras", "keras_weights", "keras_biases")


@torch.no_grad()
def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Re-initialise ``model``'s dense and conv layers (BatchNorm keeps gamma 1, beta 0 under every scheme).

    ``torch``: PyTorch's defaults, left as built (weights and biases U(+-1/sqrt(fan_in)));
    ``keras``: Keras' defaults, glorot_uniform weights U(+-sqrt(6 / (fan_in + fan_out))) and zero biases;
    ``keras_weights`` / ``keras_biases``: only the weights / only the biases as Keras (one factor at a time).
    Draws from torch's global RNG (the caller seeds it, as for the build)."""
    if scheme not in INITS:
        raise ValueError(f"unknown init '{scheme}'; use one of {', '.join(INITS)}")
    for m in model.modules():
        if isinstance(m, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
            if scheme in ("keras", "keras_weights"):
                nn.init.xavier_uniform_(m.weight)  # fans of a transposed conv swap; their sum, the bound, does not
            if scheme in ("keras", "keras_biases") and m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def build_model(
    arch: str,
    in_shape: tuple[int, int, int],
    latent_dim: int,
    hidden: tuple[int, ...] = (256, 64, 32),
    conv_width: int = 32,
    conv_relu: str = "pairs",
    conv_decoder: str = "bn",
    bn: dict | None = None,
) -> nn.Module:
    if arch == "dense":
        return DenseVAE(in_shape, latent_dim, tuple(hidden))
    if arch == "conv":
        return ConvVAE(in_shape, latent_dim, conv_width, conv_relu, conv_decoder, bn)
    raise ValueError(f"unknown arch '{arch}'; use 'dense' or 'conv'")


def model_for(cfg: TrialConfig, in_shape: tuple[int, int, int], latent_dim: int | None = None) -> nn.Module:
    """The model of a trial configuration, initialised by ``cfg.init`` from torch's global RNG (seed it first);
    ``latent_dim`` overrides the configuration's (a pack's zero-padded template)."""
    bn = {"momentum": cfg.bn_momentum, "eps": cfg.bn_eps}
    latent = cfg.latent_dim if latent_dim is None else latent_dim
    model = build_model(cfg.arch, in_shape, latent, cfg.hidden, cfg.conv_width, cfg.conv_relu, cfg.conv_decoder, bn)
    return initialise(model, cfg.init)


def memory_format(setting: str, arch: str, device: torch.device) -> torch.memory_format:
    """``TrialConfig.memory_format`` resolved: ``auto`` is channels_last for the conv net on a CPU (oneDNN's
    NHWC kernels; benchmarks/results/conv_step.md) and contiguous otherwise (a dense net has no layout; on a
    GPU float32 convolutions were not measured faster in it)."""
    if setting == "auto":
        return torch.channels_last if arch == "conv" and device.type == "cpu" else torch.contiguous_format
    return torch.channels_last if setting == "channels_last" else torch.contiguous_format


def for_speed(model: nn.Module, layout: torch.memory_format = torch.contiguous_format) -> nn.Module:
    """The same model, faster to train and evaluate, the same numbers to float rounding: every ReLU in place
    (it overwrites its input, which the backward of the layer before it, Linear, convolution or BatchNorm,
    does not keep) and weights, hence activations, in ``layout`` (``memory_format``)."""
    for module in model.modules():
        if isinstance(module, nn.ReLU):
            module.inplace = True
    return model.to(memory_format=layout)
