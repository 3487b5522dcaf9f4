"""The VAE architectures of the paper: a dense MLP (Sec. 3, Table 1) and the conv net of Fig. 4.

Both expose the same three steps so training code can act on z between them (masking,
the noise experiment of Sec. 5):

    mu, logvar = model.encode(x)          # Q(z|X) = N(mu(X), sigma^2(X))
    z = reparameterize(mu, logvar, eps)   # the reparametrization trick
    logits = model.decode(z)              # Bernoulli logits; sigmoid(logits) is the mean image
"""

from __future__ import annotations

import math
from contextlib import contextmanager

import torch
from torch import nn


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


def _conv_bn_relu(*convs: nn.Module) -> list[nn.Module]:
    return [*convs, nn.BatchNorm2d(convs[-1].out_channels), nn.ReLU()]


class ConvVAE(nn.Module):
    """The convolutional VAE of Fig. 4: 3x3 conv stacks with BatchNorm + ReLU down to 1x1, two 1x1
    heads for mean and log-variance; the decoder is symmetric, upsampling with transposed convs.

    For 28x28 inputs the spatial sizes are 28-14-7-4-2-1 (as in Fig. 4), for 32x32 32-16-8-4-2-1.
    ``width`` is the channel count of the deeper layers (32 in the paper; the first layer has half).
    """

    def __init__(self, in_shape: tuple[int, int, int], latent_dim: int, width: int = 32):
        super().__init__()
        self.in_shape, self.latent_dim = tuple(in_shape), latent_dim
        c, size, _ = in_shape
        w, w0 = width, width // 2
        sizes = [size]  # spatial size after each stride-2 3x3 conv: 28 -> 14 -> 7 -> 4
        for _ in range(3):
            sizes.append((sizes[-1] - 1) // 2 + 1)
        if sizes[-1] != 4:
            raise ValueError(f"conv architecture needs 28x28 or 32x32 inputs, got {size}x{size}")
        self.encoder = nn.Sequential(
            *_conv_bn_relu(nn.Conv2d(c, w0, 3, 2, 1)),  # 14x14x16
            *_conv_bn_relu(nn.Conv2d(w0, w, 3, 1, 1), nn.Conv2d(w, w, 3, 2, 1)),  # 7x7x32
            *_conv_bn_relu(nn.Conv2d(w, w, 3, 2, 1), nn.Conv2d(w, w, 3, 1, 1)),  # 4x4x32
            *_conv_bn_relu(nn.Conv2d(w, w, 2, 2), _same_conv2x2(w)),  # 2x2x32
            nn.Conv2d(w, w, 2, 1),  # 1x1x32
        )
        self.mu = nn.Conv2d(w, latent_dim, 1)
        self.logvar = nn.Conv2d(w, latent_dim, 1)

        def up(cin: int, cout: int, target: int, src: int) -> nn.ConvTranspose2d:
            return nn.ConvTranspose2d(cin, cout, 3, 2, 1, output_padding=target - (2 * src - 1))

        self.decoder = nn.Sequential(
            nn.Unflatten(1, (latent_dim, 1, 1)),
            *_conv_bn_relu(nn.ConvTranspose2d(latent_dim, w, 2, 1)),  # 2x2
            *_conv_bn_relu(nn.ConvTranspose2d(w, w, 2, 2), nn.Conv2d(w, w, 3, 1, 1)),  # 4x4
            *_conv_bn_relu(up(w, w, sizes[2], 4), nn.Conv2d(w, w, 3, 1, 1)),  # 7x7
            *_conv_bn_relu(up(w, w0, sizes[1], sizes[2]), nn.Conv2d(w0, w0, 3, 1, 1)),  # 14x14
            up(w0, w0, sizes[0], sizes[1]),
            nn.ReLU(),
            nn.Conv2d(w0, c, 3, 1, 1),  # 28x28 logits
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(x)
        return self.mu(h).flatten(1), self.logvar(h).flatten(1)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


def build_model(
    arch: str,
    in_shape: tuple[int, int, int],
    latent_dim: int,
    hidden: tuple[int, ...] = (256, 64, 32),
    conv_width: int = 32,
) -> nn.Module:
    if arch == "dense":
        return DenseVAE(in_shape, latent_dim, tuple(hidden))
    if arch == "conv":
        return ConvVAE(in_shape, latent_dim, conv_width)
    raise ValueError(f"unknown arch '{arch}'; use 'dense' or 'conv'")
