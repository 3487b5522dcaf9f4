"""Latent traversals: the picture of "the decoder ignores it" (issue 26), for every trial drawn one by one.

Per trial, the code of one eval image (its posterior mean mu(x), the first image of the eval split) is decoded
with one variable at a time swept over [-3, 3] (the prior's +-3 sigma), the others held: one row per latent
variable, sorted by Var[mu_i] (Table 1's "variance"), inactive variables (Var[mu_i] <= active_threshold)
marked in red. An active variable changes the digit along its row; an inactive one leaves the row constant,
as Fig. 3's zeroed variables do (Sec. 3: the decoder has learned to ignore it). The reading gives the mean
absolute pixel change along each kind of row.

Models come from the trials' checkpoints as for Fig. 3 (analysis/samples.py).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from vaesweep.engine.models import eval_mode
from vaesweep.engine.sampling import decode_images

from . import settled
from .chart import INACTIVE_COLOR, Chart, Study, new_figure, skip
from .latents import describe_trial
from .samples import ChosenModels, image_grid

KEY, TITLE = "traversals", "Latent traversals: each variable swept over [-3, 3] from an image's code"
SWEEP = (-3.0, 3.0)


@torch.no_grad()
def traversal_images(model, base: torch.Tensor, order: list[int], steps: int = 9) -> torch.Tensor:
    """(len(order), steps, C, H, W) mean images: row r decodes ``base`` (L,) with variable order[r] set to each
    of ``steps`` values evenly spaced over [-3, 3]."""
    values = torch.linspace(*SWEEP, steps, dtype=base.dtype)
    z = base.repeat(len(order), steps, 1)  # (rows, steps, L)
    for r, i in enumerate(order):
        z[r, :, i] = values
    images = decode_images(model, z.reshape(-1, len(base)))
    return images.view(len(order), steps, *images.shape[1:])


@torch.no_grad()
def base_code(model, image: torch.Tensor) -> torch.Tensor:
    """mu(x) of one image (C, H, W), the model in eval mode: the code every row starts from."""
    with eval_mode(model):
        return model.encode(image[None])[0][0]


def traversal_grids(study_dir: str | Path, chosen: pd.DataFrame, latents: pd.DataFrame, steps: int = 9) -> Chart:
    """The traversals of every chosen trial with a checkpoint; skipped with a note when none has one."""
    models = ChosenModels(study_dir)
    loaded, missing = models.load(chosen, latents)
    if not loaded:
        why = f"no usable checkpoint for trial(s) {', '.join(missing)}" if missing else "no trial was chosen"
        return skip(KEY, TITLE, f"Latent traversals need the trained models: {why}.")
    panels = []
    for row, model, t, cfg in loaded:
        t = t.sort_values("var_mu", ascending=False)
        order, active = t["latent"].astype(int).tolist(), t["active"].astype(bool).tolist()
        image = models.data(cfg).eval[0]
        images = traversal_images(model, base_code(model, image), order, steps)
        change = (images - images[:, :1]).abs().mean((1, 2, 3, 4))  # mean |pixel change| along each row
        panels.append((row, images, order, active, change))
    rows = sum(len(p[2]) for p in panels)
    fig, axes = new_figure(len(panels), (0.55 * steps + 1.6, 0.55 * rows / len(panels) + 0.8), ncols=1)
    for ax, (row, images, order, active, _) in zip(axes, panels):
        grid = image_grid(images)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        h = grid.shape[0] / len(order)
        ax.set_yticks([h * (r + 0.5) for r in range(len(order))], [f"z{i}" for i in order], fontsize=7)
        for label, on in zip(ax.get_yticklabels(), active):
            if not on:
                label.set_color(INACTIVE_COLOR)
        w = grid.shape[1] / steps
        ax.set_xticks([w * (k + 0.5) for k in range(steps)], [f"{v:g}" for v in torch.linspace(*SWEEP, steps).tolist()])
        ax.tick_params(axis="x", labelsize=7)
        n_in = len(active) - sum(active)
        ax.set_title(
            f"{describe_trial(row)}: rows by Var[μ], {n_in} inactive (red labels){settled.flag(row)}", fontsize=9
        )
    reading = "; ".join(_panel_reading(*p) for p in panels)
    if missing:
        reading += f" (no usable checkpoint for {', '.join(missing)})"
    return Chart(KEY, TITLE, reading[0].upper() + reading[1:] + ".", fig)


def _panel_reading(row, images, order, active, change) -> str:
    on = [float(c) for c, a in zip(change, active) if a]
    off = [float(c) for c, a in zip(change, active) if not a]
    text = f"{row['arch']} d={row['latent_dim']} λ={row['lam']:g}: "
    text += f"an active variable's row changes pixels by {sum(on) / len(on):.2g} on average" if on else "none active"
    if off:
        text += f", an inactive one's by {sum(off) / len(off):.2g}"
    return text + settled.flag(row)


def section(study: Study) -> Chart:
    return traversal_grids(study.folder, study.chosen, study.tables.latents)
