"""Random generation from a trained VAE, and the Fig. 3 check.

Prior samples decode z ~ N(0, I); the Fig. 3 check decodes the same z with the inactive
variables set to 0: if those variables are truly ignored by the generator, the two rows
are indistinguishable.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vaesweep.engine.models import eval_mode


@torch.no_grad()
def decode_images(model, z: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Mean images sigmoid(d(z)) in [0, 1], with the model in eval mode."""
    with eval_mode(model):
        return torch.cat([torch.sigmoid(model.decode(z[i : i + batch_size])) for i in range(0, len(z), batch_size)])


def prior_codes(n: int, latent_dim: int, seed: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """z ~ N(0, I), reproducible from ``seed``."""
    gen = torch.Generator(device).manual_seed(seed)
    return torch.randn(n, latent_dim, generator=gen, device=device)


def zero_inactive(z: torch.Tensor, active: list[bool] | torch.Tensor) -> torch.Tensor:
    """Fig. 3: the same codes with every inactive variable set to 0."""
    keep = torch.as_tensor(active, dtype=z.dtype, device=z.device)
    return z * keep


def save_sample_grid(model, active: list[bool], path: str | Path, n: int = 16, seed: int = 0) -> Path:
    """Fig. 3 as a PNG: top row prior samples, bottom row the same with inactive variables zeroed."""
    from torchvision.utils import save_image

    device = next(model.parameters()).device
    z = prior_codes(n, len(active), seed, device)
    images = torch.cat([decode_images(model, z), decode_images(model, zero_inactive(z, active))])
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(images.cpu(), path, nrow=n, padding=2, pad_value=1.0)
    return path
