"""The metric catalogue: every number a trial reports, by family, in one place.

Each family declares its keys (exact names or a prefix), its level and whether it is a timing:

- ``epoch``: a column of every report (the epochs table, one row per trial per epoch);
- ``trial``: also part of a trial's final answer (``TrialResult.summary``, the trials table, the
  report's trials columns); timings never are (a trial's answer must not depend on the machine);
- ``latent``: one value per latent variable (the latents and latent_history tables, Table 1).

The engine's reports, ``TrialResult``, the study recorder (plain and packed trials alike) and the
report read this catalogue; a metric added here reaches every table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

Level = Literal["epoch", "trial", "latent"]


@dataclass(frozen=True)
class Family:
    name: str
    level: Level
    keys: tuple[str, ...] = ()
    prefix: str | None = None  # every scalar key starting with it (e.g. fid_)
    timings: tuple[str, ...] = ()  # keys of the family that are wall-clock seconds
    source: str = ""  # where it is computed and which part of the paper it measures

    def owns(self, key: str) -> bool:
        return key in self.keys or key in self.timings or (self.prefix is not None and key.startswith(self.prefix))


FACTOR_RHO, FACTOR_R2 = "factor_rho_", "factor_r2_"  # known factors (generated data): per variable, per trial

CATALOGUE: tuple[Family, ...] = (
    Family(
        "progress",
        "epoch",
        ("epoch", "step", "evaluated", "node", "phase"),
        source="engine/trial.py: where the trial stands; phase: the Sec. 5 noise experiment",
    ),
    Family(
        "train",
        "epoch",
        ("train_loss", "train_recon", "train_kl", "lam_effective"),
        source="engine/losses.py: eq. (6) averaged over the epoch's minibatches",
    ),
    Family("time", "epoch", timings=("epoch_time", "time_total"), source="engine/trial.py: wall-clock seconds"),
    Family("settle", "trial", ("settled", "settled_step"), source="engine/settle.py: has the collapse stopped moving?"),
    Family(
        "stop",
        "trial",
        ("stopped_reason", "stopped_step"),
        source="engine/trial.py: why the trial ended (settled, budget; failed and scheduler: the study recorder) "
        "and at which minibatch; on its final report",
    ),
    Family(
        "collapse",
        "trial",
        (
            "n_active",
            "n_inactive",
            "law_residual_max",
            "law_residual_mean",
            "mean_mu_abs_max",
            "kl_working",
            "law_excess",
            "mu_excess",
            "recon",
            "kl",
            "elbo",
        ),
        source="engine/latents.py: Table 1 and the Sec. 4 laws on the eval split",
    ),
    Family(
        "likelihood",
        "trial",
        ("nll_iw",),
        timings=("nll_iw_seconds",),
        source="engine/information.py: importance-weighted -log p(x) (Burda et al. 2015), K = iw_samples, on the "
        "first iw_images eval images, at the final epoch",
    ),
    Family(
        "information",
        "trial",
        ("mi", "mi_log_n"),
        source="engine/information.py: I_q(x; z) on the first mi_images eval images (He et al. 2019) and its "
        "ceiling log N",
    ),
    Family(
        "fid",
        "trial",
        prefix="fid_",
        timings=("fid_seconds",),
        source="engine/fid.py: FID-proxy of prior samples, reconstructions, zeroed variables (Sec. 6-7)",
    ),
    Family(
        "two_stage",
        "trial",
        prefix="two_stage_",
        timings=("two_stage_seconds",),
        source="engine/two_stage.py: the second-stage VAE of Sec. 6.2 / 7",
    ),
    Family("noise", "trial", prefix="noise_", source="engine/noise.py: the Sec. 5 noise experiment (Fig. 7)"),
    Family(
        "factor_fit",
        "trial",
        prefix=FACTOR_R2,
        source="engine/factors.py: R^2 of each known factor (generated data) fitted on the active variables' means",
    ),
    Family(
        "latent",
        "latent",
        ("latent", "mean_mu", "var_mu", "mean_sigma2", "law", "kl", "recon_gain", "mi_i", "active"),
        source="engine/latents.py: Table 1, one row per latent variable; mi_i: I_q(x; z_i), engine/information.py",
    ),
    Family(
        "factors",
        "latent",
        prefix=FACTOR_RHO,
        source="engine/factors.py: each variable's rank correlation with each known factor (generated data)",
    ),
)


def family_of(key: str, level: Level | None = None) -> Family | None:
    """The family a key belongs to (among those of ``level`` when given), or None."""
    for family in CATALOGUE:
        if (level is None or family.level == level) and family.owns(key):
            return family
    return None


def is_timing(key: str) -> bool:
    family = family_of(key)
    return family is not None and key in family.timings


def _scalar(value) -> bool:
    return isinstance(value, (bool, int, float, str)) or value is None


def epoch_row(report: dict) -> dict:
    """The scalar columns of one epoch report (the epochs table): every catalogued key of an epoch
    or trial family; per-variable lists ('latents', 'trace') and unknown keys are left out."""
    return {
        k: v
        for k, v in report.items()
        if _scalar(v) and (f := family_of(k)) is not None and f.level in ("epoch", "trial")
    }


def trial_row(report: dict) -> dict:
    """A trial's answer from its last report: the catalogued keys of trial families, timings left out."""
    return {
        k: v
        for k, v in report.items()
        if _scalar(v) and (f := family_of(k, "trial")) is not None and k not in f.timings
    }


def trial_keys(columns: Iterable[str] | None = None) -> tuple[str, ...]:
    """The exact keys of the trial families, in catalogue order; given ``columns`` (a table's), the
    trial-level metrics among them in catalogue order, a prefix family's in the order given, timings left out
    (the report's trials columns)."""
    if columns is None:
        return tuple(k for f in CATALOGUE if f.level == "trial" for k in f.keys)
    columns = list(columns)
    return tuple(
        dict.fromkeys(
            k
            for f in CATALOGUE
            if f.level == "trial"
            for k in (*f.keys, *columns)
            if k in columns and f.owns(k) and k not in f.timings
        )
    )


def latent_keys(columns: Iterable[str] = ()) -> tuple[str, ...]:
    """The exact keys of the per-variable families, then those of ``columns`` (a row's) that a per-variable
    prefix family owns (factor_rho_*)."""
    exact = tuple(k for f in CATALOGUE if f.level == "latent" for k in f.keys)
    return exact + tuple(k for k in columns if k not in exact and family_of(k, "latent") is not None)
