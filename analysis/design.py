"""What a study varied, read from its trials table: the axes, panels and lines of the charts.

A trials table holds every TrialConfig field the study set; ``frame(trials)`` fills the others
with their TrialConfig defaults, so ``latent_dim`` and ``lam`` are always known, and adds:

- ``panel``: the architecture (and the data set, when the study varied it): one panel each,
  labelled 'dense' or 'dense · dataset=mnist';
- ``setting``: every other varied field except the seed (the Sec. 6.1 remedies such as
  warmup_steps, free_bits, capacity_max, or beta-VAE variants, and the training choices such as init),
  as one label: one line style each; a field a varied ``preset`` sets is named by the preset alone;
- ``lam_level`` / ``lam_center``: lambda as an ordered label, binned on a log scale when a
  random search drew many values (one line or heatmap row per level).

A field is *varied* when the study's trials take more than one value of it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from vaesweep.config.trial import PRESETS, TrialConfig

PANEL_FIELDS = ("arch", "dataset")
AXIS_FIELDS = ("latent_dim", "lam")
# Fields that do not change the trained model (or are the repeats): never a line of their own.
NOT_SETTINGS = {
    "seed",
    "threads",
    "device",
    "data_root",
    "download",
    "eval_every",
    "gain_every",
    "track_every",
    "fid",
    "fid_every",
    "fid_samples",
    "cache_dir",
    "settle_patience",
    "settle_min_steps",
    "settle_law_tol",
    "mi_images",
    "iw_samples",
    "iw_images",
}
MAX_LAM_LEVELS = 8


@dataclass(frozen=True)
class Design:
    """The trials of a study, annotated, and what the study varied."""

    trials: pd.DataFrame  # done trials only, with panel / setting / lam_level / lam_center
    varied: tuple[str, ...]  # config fields with more than one value (over all trials)
    settings: tuple[str, ...]  # the varied fields folded into ``setting``

    @property
    def panels(self) -> list[str]:
        return list(dict.fromkeys(self.trials["panel"]))


def fmt(v) -> str:
    """A short label for a config value: 0.5 -> '0.5', 2.0 -> '2', (128, 32) -> '128-32'."""
    if isinstance(v, tuple):
        return "-".join(fmt(x) for x in v)
    if isinstance(v, (float, np.floating)):
        return f"{float(v):g}"
    return str(v)


def span(values, spec: str = ".2g") -> str:
    """'0.1–0.9' for a range of numbers, one number when they are all equal (as printed)."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo}–{hi}"


def with_defaults(trials: pd.DataFrame) -> pd.DataFrame:
    """The trials with every TrialConfig field as a column (defaults where the study did not set it, a preset's
    values under a preset), list cells (``hidden``) as tuples so they can be grouped on."""
    df = trials.copy()
    for name, field in TrialConfig.model_fields.items():
        if name not in df:
            df[name] = [field.default] * len(df)
        elif df[name].map(lambda v: isinstance(v, (list, np.ndarray))).any():
            df[name] = df[name].map(lambda v: tuple(v) if isinstance(v, (list, np.ndarray)) else v)
    for preset, fields in PRESETS.items():  # a preset's values where the trial did not give the field (TrialConfig)
        rows = df["preset"] == preset
        for name, value in fields.items():
            given = trials[name].notna() if name in trials else pd.Series(False, index=df.index)
            df.loc[rows & ~given, name] = value
    return df


def varied_fields(trials: pd.DataFrame) -> list[str]:
    df = with_defaults(trials)
    return [f for f in TrialConfig.model_fields if df[f].nunique(dropna=False) > 1]


def panel_fields(varied) -> list[str]:
    """One panel per architecture, and per data set when the study varied it."""
    return ["arch", *[f for f in PANEL_FIELDS[1:] if f in varied]]


def lam_levels(lam: pd.Series, max_levels: int = MAX_LAM_LEVELS) -> tuple[pd.Series, dict[str, float]]:
    """Lambda as ordered labels, and each label's value (the geometric bin centre when binned).

    Up to ``max_levels`` distinct values: one level each. More (a random search): equal bins
    in log(lambda), labelled by their range.
    """
    values = sorted(lam.unique())
    if len(values) <= max_levels:
        labels = {v: f"λ={fmt(v)}" for v in values}
        order = [labels[v] for v in values]
        out = lam.map(labels)
        centers = {labels[v]: float(v) for v in values}
    else:
        lo, hi = max(min(values), 1e-12), max(values)
        edges = np.geomspace(lo, hi, max_levels + 1)
        idx = np.clip(np.searchsorted(edges, lam.clip(lower=lo), side="right") - 1, 0, max_levels - 1)
        order = [f"λ∈[{edges[i]:.2g}, {edges[i + 1]:.2g}]" for i in range(max_levels)]
        out = pd.Series([order[i] for i in idx], index=lam.index)
        centers = {order[i]: float(math.sqrt(edges[i] * edges[i + 1])) for i in range(max_levels)}
        order = [o for o in order if o in set(out)]
    return pd.Series(pd.Categorical(out, categories=order, ordered=True), index=lam.index), centers


def _set_by_preset(df: pd.DataFrame, field: str) -> bool:
    """Whether ``field`` is one a preset sets and, within each preset value, takes one value (so the preset's
    name says it)."""
    preset_fields = {f for fields in PRESETS.values() for f in fields}
    if field not in preset_fields or df["preset"].nunique(dropna=False) < 2:
        return False
    return bool((df.groupby(df["preset"].fillna("none"))[field].nunique(dropna=False) <= 1).all())


def frame(trials: pd.DataFrame) -> Design:
    """Annotate a study's trials table (see the module docstring); keeps the done trials."""
    df = with_defaults(trials)
    varied = varied_fields(df)
    done = df[df["status"] == "done"].copy() if "status" in df else df.copy()
    panel_cols = panel_fields(varied)
    settings = [
        f
        for f in varied_fields(done)  # what differs between the trials drawn
        if f not in (*PANEL_FIELDS, *AXIS_FIELDS) and f not in NOT_SETTINGS and not _set_by_preset(done, f)
    ]
    rows = done.to_dict("records")
    done["panel"] = pd.Series(
        [" · ".join(fmt(r[c]) if c == "arch" else f"{c}={fmt(r[c])}" for c in panel_cols) for r in rows],
        index=done.index,
        dtype=object,
    )
    done["setting"] = pd.Series(
        [" · ".join(f"{c}={fmt(r[c])}" for c in settings) for r in rows], index=done.index, dtype=object
    )
    if len(done):
        done["lam_level"], centers = lam_levels(done["lam"])
        done["lam_center"] = done["lam_level"].map(centers).astype(float)
    else:
        done["lam_level"], done["lam_center"] = pd.Series(dtype=object), pd.Series(dtype=float)
    return Design(done.reset_index(drop=True), tuple(varied), tuple(settings))
