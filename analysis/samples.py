"""Sample grids from trained models: prior samples, and the same with inactive variables zeroed (Fig. 3).

Fig. 3: decode z ~ N(0, I) (top row), then the same z with every inactive variable set to 0
(bottom row); if the generator truly ignores those variables the rows are indistinguishable.
The reading gives the mean absolute pixel difference between the rows.

Models come from a study's Ray checkpoints: the trial's latest one
(``vaesweep.engine.checkpoints.find_checkpoint`` knows where), holding the weights and the config.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from vaesweep.config.folder import RAY_FOLDER
from vaesweep.config.trial import TrialConfig
from vaesweep.engine.checkpoints import build_trained, find_checkpoint, load_trained
from vaesweep.engine.data import DataError, load_dataset
from vaesweep.engine.sampling import decode_images, prior_codes, zero_inactive

from . import settled
from .chart import Chart, Study, new_figure, skip
from .design import with_defaults
from .latents import describe_trial

KEY, TITLE = "fig3_samples", "Fig. 3: prior samples, and the same codes with inactive variables zeroed"


def dataset_shape(cfg: TrialConfig) -> tuple[int, int, int]:
    """(C, H, W) of the trial's data set (loads it; raises DataError when it is not on this machine)."""
    return load_dataset(cfg.dataset, cfg.data_root).shape


def load_trial_model(path: str | Path, shape_of: Callable[[TrialConfig], tuple] = dataset_shape):
    """(model in eval mode on the CPU, TrialConfig) from a trial checkpoint."""
    cfg, weights = load_trained(path)
    return build_trained(cfg, weights, shape_of(cfg)), cfg


def fig3_images(model, active: list[bool], n: int = 12, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(prior samples, same codes with inactive variables zeroed), each (n, C, H, W) in [0, 1]."""
    z = prior_codes(n, len(active), seed)
    return decode_images(model, z), decode_images(model, zero_inactive(z, active))


def image_grid(images: torch.Tensor, pad: int = 2) -> torch.Tensor:
    """Rows x cols images (R, N, C, H, W) as one (H', W') or (H', W', C) picture, white between.

    (torchvision's make_grid does the same, but importing torchvision costs seconds.)"""
    r, n, c, h, w = images.shape
    framed = torch.ones(r, n, c, h + 2 * pad, w + 2 * pad)
    framed[..., pad : pad + h, pad : pad + w] = images
    grid = framed.permute(0, 3, 1, 4, 2).reshape(r * (h + 2 * pad), n * (w + 2 * pad), c)
    return grid[..., 0] if c == 1 else grid


class ChosenModels:
    """The trained models of the chosen trials, from their checkpoints, each data set loaded once:
    ``load(chosen, latents)`` gives [(trial row, model in eval mode, its latents rows sorted by variable, its
    TrialConfig)] and
    the trials it could not load, with why (no checkpoint, data set not on this machine, another version)."""

    def __init__(self, study_dir: str | Path):
        self.study_dir, self.datasets = Path(study_dir), {}

    def data(self, cfg: TrialConfig):
        key = (cfg.dataset, cfg.data_root)
        if key not in self.datasets:
            self.datasets[key] = load_dataset(cfg.dataset, cfg.data_root)
        return self.datasets[key]

    def load(self, chosen: pd.DataFrame, latents: pd.DataFrame) -> tuple[list[tuple], list[str]]:
        loaded, missing = [], []
        for _, row in with_defaults(chosen).iterrows():
            path = find_checkpoint(self.study_dir, row["trial_id"])
            t = latents[latents["trial_id"] == row["trial_id"]].sort_values("latent") if len(latents) else latents
            if path is None or not len(t):
                missing.append(str(row["trial_id"]))
                continue
            try:
                model, cfg = load_trial_model(path, lambda cfg: self.data(cfg).shape)
            except (DataError, ValueError, RuntimeError, KeyError, pickle.UnpicklingError) as err:
                # data set not on this machine, a checkpoint of another version or kind
                missing.append(f"{row['trial_id']} ({str(err).splitlines()[0]})")
                continue
            loaded.append((row, model, t, cfg))
        return loaded, missing


def sample_grids(
    study_dir: str | Path, chosen: pd.DataFrame, latents: pd.DataFrame, n: int = 12, seed: int = 0
) -> Chart:
    """Fig. 3 for every chosen trial that has a checkpoint; skipped with a note when none has."""
    loaded, missing = ChosenModels(study_dir).load(chosen, latents)
    panels = []
    for row, model, t, _ in loaded:
        active = t["active"].astype(bool).tolist()
        prior, zeroed = fig3_images(model, active, n, seed)
        grid = image_grid(torch.stack([prior, zeroed]))
        panels.append((row, grid, float((prior - zeroed).abs().mean()), len(active) - sum(active)))
    if not panels:
        why = (
            f"no usable checkpoint under {Path(study_dir) / RAY_FOLDER} for trial(s) {', '.join(missing)}"
            if missing
            else "no trial was chosen"
        )
        return skip(KEY, TITLE, f"Sample grids need the trained models: {why}.")
    fig, axes = new_figure(len(panels), (0.75 * n, 1.75), ncols=1)
    for ax, (row, grid, diff, n_in) in zip(axes, panels):
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        h = grid.shape[0]
        ax.set_yticks([h / 4, 3 * h / 4], ["prior z", f"{n_in} inactive\nzeroed"], fontsize=8)
        ax.set_xticks([])
        ax.set_title(f"{describe_trial(row)}: mean |Δpixel| = {diff:.2g}{settled.flag(row)}", fontsize=9)
    reading = "; ".join(
        f"{row['arch']} d={row['latent_dim']} λ={row['lam']:g}: zeroing the {n_in} inactive variables changes "
        f"pixels by {diff:.2g} on average ({_visibility(diff)})"
        f"{settled.flag(row)}"
        if n_in
        else f"{row['arch']} d={row['latent_dim']} λ={row['lam']:g}: no inactive variable, the rows are identical"
        f"{settled.flag(row)}"
        for row, _, diff, n_in in panels
    )
    if missing:
        reading += f" (no usable checkpoint for {', '.join(missing)})"
    return Chart(KEY, TITLE, reading + ".", fig)


def _visibility(diff: float) -> str:
    """How a mean pixel change of ``diff`` reads on a grid (Fig. 3: zeroed inactive variables change nothing)."""
    return "indistinguishable" if diff < 0.01 else "visible" if diff > 0.05 else "slight"


def section(study: Study) -> Chart:
    return sample_grids(study.folder, study.chosen, study.tables.latents)
