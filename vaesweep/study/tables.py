"""Study results as tidy Parquet tables, written by the driver while the study runs.

In ``runs/<name>/``:

- ``trials.parquet``: one row per trial: ``trial_id``, config columns, final summary metrics,
  ``status`` (pending / running / done / failed) and ``error``;
- ``epochs.parquet``: one row per trial per epoch (train loss parts, timing, collapse summary,
  ``settled`` / ``settled_step``: whether the collapse had settled, vaesweep/engine/settle.py);
- ``latents.parquet``: one row per trial per latent variable, the final per-variable metrics;
- ``latent_history.parquet``: the same per-variable metrics at every evaluated epoch (Fig. 2, 7);
- ``trace.parquet``: per-variable minibatch var_mu every K steps, when ``track_every`` is set.

Written by ``vaesweep.study.recorder.Recorder`` (a Ray Tune callback); this module needs only
pandas and pyarrow, so a finished study reads back without Ray or torch.
``load_study(path)`` reads them back; a folder whose tables or ``study.yaml`` are not vaesweep's
(garbage bytes, another tool's Parquet) raises ``StudyFolderError`` naming the file and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from vaesweep.config.errors import StudyFolderError

TABLES = ("trials", "epochs", "latents", "latent_history", "trace")


@dataclass
class StudyTables:
    trials: pd.DataFrame
    epochs: pd.DataFrame
    latents: pd.DataFrame
    latent_history: pd.DataFrame
    trace: pd.DataFrame


SPEC_COPY = "study.yaml"  # the spec a study folder was run with (written by vaesweep.study.runner)
REQUIRED_COLUMNS = {"trials": ("trial_id", "status")}  # the other tables: trial_id


def load_study(path: str | Path) -> StudyTables:
    """The DataFrames of a study directory (``runs/<name>``); missing tables are empty."""
    path = Path(path)
    if not (path / "trials.parquet").exists():
        raise FileNotFoundError(f"no study results in '{path}'; run a study first (python -m vaesweep run STUDY.yaml)")
    read_spec_copy(path)
    return StudyTables(**{t: _read_table(path, t) for t in TABLES})


def check_study_folder(path: Path) -> None:
    """Raise ``StudyFolderError`` unless the vaesweep files already in ``path`` are readable and vaesweep's.
    Reads each table's footer only (the Recorder reads the rows themselves when the study resumes)."""
    read_spec_copy(path)
    if (path / "trials.parquet").exists():  # the tables load_study would read
        for table in TABLES:
            if (path / f"{table}.parquet").exists():
                _check_table(path, table)


def read_spec_copy(path: Path) -> dict:
    """The saved spec of a study folder as a mapping ({} where there is none)."""
    copy = Path(path) / SPEC_COPY
    if not copy.exists():
        return {}
    try:
        spec = yaml.safe_load(copy.read_text())
        named = isinstance(spec, dict) and isinstance(spec.get("name"), str)
        problem = None if named else "no study name in it"
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        problem = f"not YAML: {type(err).__name__}"
    if problem is not None:
        raise _foreign(copy, "is not a vaesweep study spec", problem)
    return spec


def _read_table(path: Path, table: str) -> pd.DataFrame:
    if not (path / f"{table}.parquet").exists():
        return pd.DataFrame()
    return pd.read_parquet(_check_table(path, table))


def _check_table(path: Path, table: str) -> Path:
    """The table's file, once its Parquet footer reads and names vaesweep's key columns."""
    file = path / f"{table}.parquet"
    try:
        columns = pq.read_schema(file).names
    except (pa.ArrowException, OSError) as err:
        why = str(err).split("': ", 1)[-1].split(". ")[0].rstrip(".")  # drop pyarrow's own path and advice
        raise _foreign(file, "is not a vaesweep results table", why) from None
    missing = [c for c in REQUIRED_COLUMNS.get(table, ("trial_id",)) if c not in columns]
    if columns and missing:  # an empty table (no trials yet) has no columns
        why = f"no {', '.join(missing)} column" + "s" * (len(missing) > 1)
        raise _foreign(file, "is not a vaesweep results table", why)
    return file


def _foreign(file: Path, what: str, why: str) -> StudyFolderError:
    study = file.parent
    return StudyFolderError(f"{file} {what} ({why}); delete {study} to start the study afresh, "
                            f"or give the folder of a vaesweep study (e.g. runs/smoke)")


@dataclass
class Progress:
    """One line per flush: trials done / running / failed, and the best so far."""

    name: str
    total: int
    metric: str = "elbo"
    mode: str = "max"

    def show(self, trials: pd.DataFrame) -> None:
        print(progress_line(self.name, trials, self.total, self.metric, self.mode), flush=True)


def progress_line(name: str, trials: pd.DataFrame, total: int, metric: str, mode: str) -> str:
    counts = trials["status"].value_counts() if len(trials) else pd.Series(dtype=int)
    line = (f"[{name}] {counts.get('done', 0)}/{total} done, {counts.get('running', 0)} running, "
            f"{counts.get('failed', 0)} failed")
    best = best_trials(trials, metric, mode, 1)
    if len(best):
        b = best.iloc[0]
        line += f"; best {metric} {b[metric]:.4g} ({b['trial_id']}: {describe(b)})"
    return line


def best_trials(trials: pd.DataFrame, metric: str, mode: str, n: int = 5) -> pd.DataFrame:
    if metric not in trials or not len(trials):
        return trials.iloc[:0]
    scored = trials[trials["status"] != "failed"].dropna(subset=[metric])
    return scored.sort_values(metric, ascending=(mode == "min")).head(n)


def describe(row) -> str:
    keys = ("arch", "latent_dim", "lam", "seed")
    return " ".join(f"{k}={row[k]}" for k in keys if k in row and pd.notna(row[k]))


EXTRA_PREFIXES = ("fid_", "noise_", "two_stage_")  # scalar keys kept as they come: FID-proxy, Sec. 5, two-stage
SUMMARY_KEYS = ("n_active", "n_inactive", "law_residual_max", "law_residual_mean", "mean_mu_abs_max",
                "recon", "kl", "elbo", "kl_working", "law_excess", "mu_excess",
                "settled", "settled_step")  # vaesweep/engine/settle.py: has the collapse stopped moving?
EPOCH_KEYS = {"epoch", "step", "evaluated", "node", "train_loss", "train_recon", "train_kl", "lam_effective", "epoch_time",
              "time_total", "phase", *SUMMARY_KEYS}  # phase and noise_*: the Sec. 5 experiment (vaesweep.engine.noise)


def _concat(groups) -> pd.DataFrame:
    rows = [r for g in groups for r in g]
    return pd.DataFrame(rows)


