"""Study results as tidy Parquet tables, written by the driver while the study runs.

In ``runs/<name>/``:

- ``trials.parquet``: one row per trial: ``trial_id``, config columns, final summary metrics,
  ``status`` (pending / running / done / failed) and ``error``;
- ``epochs.parquet``: one row per trial per epoch (train loss parts, timing, collapse summary,
  ``settled`` / ``settled_step``: whether the collapse had settled, vaesweep/settle.py);
- ``latents.parquet``: one row per trial per latent variable, the final per-variable metrics;
- ``latent_history.parquet``: the same per-variable metrics at every evaluated epoch (Fig. 2, 7);
- ``trace.parquet``: per-variable minibatch var_mu every K steps, when ``track_every`` is set.

``Recorder`` is a Ray Tune callback; it keeps rows in memory, deduplicated by
(trial, epoch) so a resumed study never doubles a row, and rewrites the files atomically.
``load_study(path)`` reads them back; a folder whose tables or ``study.yaml`` are not vaesweep's
(garbage bytes, another tool's Parquet) raises ``StudyFolderError`` naming the file and the fix.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from ray import tune

from .config import trial_fields
from .packing import PACK_KEY, packed_id

TABLES = ("trials", "epochs", "latents", "latent_history", "trace")


@dataclass
class StudyTables:
    trials: pd.DataFrame
    epochs: pd.DataFrame
    latents: pd.DataFrame
    latent_history: pd.DataFrame
    trace: pd.DataFrame


SPEC_COPY = "study.yaml"  # the spec a study folder was run with (written by vaesweep.study)
REQUIRED_COLUMNS = {"trials": ("trial_id", "status")}  # the other tables: trial_id


class StudyFolderError(ValueError):
    """A study folder with files vaesweep did not write; the message is one line naming the file and the fix."""


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


def _write(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_suffix(".parquet.tmp")
    df.to_parquet(tmp, index=False)
    os.replace(tmp, path)


class Recorder(tune.Callback):
    """Collects every reported epoch into tidy tables and flushes them as Parquet."""

    def __init__(self, out: Path, flush_every_s: float = 5.0, progress: "Progress | None" = None):
        self.out = Path(out)
        self.flush_every_s, self.progress = flush_every_s, progress
        self._last_flush = 0.0
        old = load_study(self.out) if (self.out / "trials.parquet").exists() else None
        self.trials: dict[str, dict] = {} if old is None else {r["trial_id"]: r for r in old.trials.to_dict("records")}
        self.epochs: dict[tuple, dict] = {} if old is None else {
            (r["trial_id"], r["epoch"]): r for r in old.epochs.to_dict("records")}
        self.history: dict[tuple, list[dict]] = {}
        self.trace: dict[tuple, list[dict]] = {}
        if old is not None:
            for key, group in old.latent_history.groupby(["trial_id", "epoch"]) if len(old.latent_history) else []:
                self.history[key] = group.to_dict("records")
            for key, group in old.trace.groupby(["trial_id", "epoch"]) if len(old.trace) else []:
                self.trace[key] = group.to_dict("records")

    # Ray pickles its callbacks into the experiment state and unpickles them on Tuner.restore:
    # keep only the settings, and reload the rows from disk, so a resumed study loses nothing.
    def __getstate__(self):
        return {"out": self.out, "flush_every_s": self.flush_every_s, "progress": self.progress}

    def __setstate__(self, state):
        self.__init__(**state)

    # --- Ray Tune callback hooks ---------------------------------------------------------------
    def on_trial_start(self, iteration, trials, trial, **info):
        for row in self._rows(trial):
            row["status"] = "running"
        self._maybe_flush(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.add_result(trial.trial_id, result)
        for row, res in zip(self._rows(trial), result.get("packed", [result])):
            row["status"] = "running"
            if "diverged" in res:
                row.update(status="failed", error=res["diverged"])
        self._maybe_flush(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        for row in self._rows(trial):
            if row.get("status") != "failed":
                row["status"] = "done"
        self.flush(trials)

    def on_trial_error(self, iteration, trials, trial, **info):
        for row in self._rows(trial):
            row.update(status="failed", error=_error_line(trial))
        self.flush(trials)

    def on_experiment_end(self, trials, **info):
        self.flush(trials)

    # --- rows --------------------------------------------------------------------------------
    def add_result(self, trial_id: str, result: dict) -> None:
        if "packed" in result:  # a packed trial (vaesweep.packing): one trial per configuration
            for i, res in enumerate(result["packed"]):
                self.add_result(packed_id(trial_id, i), res)
            return
        epoch = result.get("epoch")
        if epoch is None:
            return
        scalars = {k: v for k, v in result.items()
                   if k in EPOCH_KEYS or (isinstance(v, (int, float, bool, str)) and k.startswith(EXTRA_PREFIXES))}
        self.epochs[(trial_id, epoch)] = {"trial_id": trial_id, **scalars}
        if "latents" in result:
            self.history[(trial_id, epoch)] = [{"trial_id": trial_id, "epoch": epoch, **r} for r in result["latents"]]
        if "trace" in result:
            self.trace[(trial_id, epoch)] = [
                {"trial_id": trial_id, "epoch": epoch, "step": t["step"], "latent": i,
                 "var_mu": v, "mean_sigma2": s}
                for t in result["trace"] for i, (v, s) in enumerate(zip(t["var_mu"], t["mean_sigma2"]))]

    def _trial_row(self, trial) -> dict:
        return self._row(trial.trial_id, trial.config)

    def _rows(self, trial) -> list[dict]:
        """The rows of a Ray trial: its own, or one per configuration of a packed trial."""
        if PACK_KEY not in trial.config:
            return [self._trial_row(trial)]
        return [self._row(packed_id(trial.trial_id, i), {**trial.config, **item})
                for i, item in enumerate(trial.config[PACK_KEY])]

    def _row(self, trial_id: str, trial_config: dict) -> dict:
        row = self.trials.get(trial_id)
        if row is None:
            config = {k: _cell(v) for k, v in trial_config.items() if k in trial_fields()}
            row = self.trials[trial_id] = {"trial_id": trial_id, **config, "status": "pending", "error": None}
        return row

    def _sync_statuses(self, trials) -> None:
        for t, row in ((t, row) for t in trials or [] for row in self._rows(t)):
            if t.status == "ERROR" and row.get("status") != "failed":
                row.update(status="failed", error=_error_line(t))
            elif t.status == "TERMINATED" and row.get("status") not in ("failed",):
                row["status"] = "done"

    def _maybe_flush(self, trials) -> None:
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush(trials)

    def flush(self, trials=None) -> None:
        self._sync_statuses(trials)
        tables = self.tables()
        self.out.mkdir(parents=True, exist_ok=True)
        for name in TABLES:
            _write(getattr(tables, name), self.out / f"{name}.parquet")
        self._last_flush = time.monotonic()
        if self.progress is not None:
            self.progress.show(tables.trials)

    def tables(self) -> StudyTables:
        epochs = pd.DataFrame(list(self.epochs.values()))
        if len(epochs):
            epochs = epochs.sort_values(["trial_id", "epoch"]).reset_index(drop=True)
        trials = pd.DataFrame(list(self.trials.values()))
        if len(epochs) and len(trials):
            last = epochs.groupby("trial_id").tail(1).set_index("trial_id")
            final = [c for c in dict.fromkeys((*SUMMARY_KEYS, *last.columns))
                     if c in last and (c in SUMMARY_KEYS or c.startswith(EXTRA_PREFIXES))]
            done = epochs.groupby("trial_id").agg(epochs_done=("epoch", "max"), time_total=("time_total", "max"))
            trials = (trials.drop(columns=[*final, *done.columns], errors="ignore")
                      .join(last[final], on="trial_id").join(done, on="trial_id"))
        history = _concat(self.history.values())
        latents = history.sort_values("epoch").groupby(["trial_id", "latent"]).tail(1) if len(history) else history
        if len(latents):
            latents = latents.sort_values(["trial_id", "latent"]).reset_index(drop=True)
        return StudyTables(trials, epochs, latents, history, _concat(self.trace.values()))


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
                "settled", "settled_step")  # vaesweep/settle.py: has the collapse stopped moving?
EPOCH_KEYS = {"epoch", "step", "evaluated", "node", "train_loss", "train_recon", "train_kl", "lam_effective", "epoch_time",
              "time_total", "phase", *SUMMARY_KEYS}  # phase and noise_*: the Sec. 5 experiment (vaesweep.noise)


def _concat(groups) -> pd.DataFrame:
    rows = [r for g in groups for r in g]
    return pd.DataFrame(rows)


def _cell(v):
    return list(v) if isinstance(v, tuple) else v


def _error_line(trial) -> str:
    """The last line of the trial's traceback (Ray keeps it in error.txt)."""
    path = getattr(trial, "error_file", None)
    try:
        text = Path(path).read_text().strip() if path else ""
    except OSError:
        text = ""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "trial raised an error (see the Ray trial logs)"
