"""The Ray Tune callback that records every reported epoch into the study's tables (vaesweep/study/tables.py).

It keeps rows in memory, deduplicated by (trial, epoch) so a resumed study never doubles a row,
and rewrites the files atomically.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pandas as pd
from ray import tune

from vaesweep.config.packing import PACK_KEY, packed_id
from vaesweep.config.trial import trial_fields
from vaesweep.study.tables import (EPOCH_KEYS, EXTRA_PREFIXES, SUMMARY_KEYS, TABLES, Progress, StudyTables,
                                   _concat, load_study)


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
        if "packed" in result:  # a packed trial (vaesweep.engine.packing): one trial per configuration
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
