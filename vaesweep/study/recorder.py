"""The Ray Tune callback that records every reported epoch into the study's tables (vaesweep/study/tables.py).

A flush costs what is new: the rows reported since the last flush are appended as one Parquet part per
table, and the small trials table is rewritten whole. The driver holds only those rows and one small
dict per trial, however long the study runs. The parts are compacted at the end of the study and when
it resumes; a resumed trial's re-reported epochs replace the earlier ones, so no row is doubled.
Which keys reach which table is the metric catalogue's word (vaesweep/config/metrics.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from ray import tune

from vaesweep.config.folder import TRIALS, has_results
from vaesweep.config.metrics import epoch_row, family_of, latent_keys, trial_row
from vaesweep.config.packing import PACK_KEY, packed_id
from vaesweep.config.trial import trial_fields
from vaesweep.study.progress import Progress
from vaesweep.study.relocation import study_folder
from vaesweep.study.tables import (
    BLOCKS,
    StudyTables,
    append_part,
    compact,
    drop_trials,
    load_study,
    read_table,
    write_table,
)

FINAL = ("epochs_done", "time_total")  # trials-table columns from a trial's epochs, after its summary


class Recorder(tune.Callback):
    """Collects every reported epoch into tidy tables and flushes the new rows as Parquet parts."""

    def __init__(self, out: Path, flush_every_s: float = 5.0, progress: Progress | None = None):
        self.out = Path(out)
        self.flush_every_s, self.progress = flush_every_s, progress
        self._last_flush = 0.0
        self.trials: dict[str, dict] = {}  # trial_id -> config, status, error
        self.final: dict[str, dict] = {}  # trial_id -> summary of its last epoch, epochs_done, time_total
        self.new: dict[str, dict[tuple, list | dict]] = {t: {} for t in BLOCKS}  # rows not flushed yet, by block
        self._parts = 0  # parts flushed by this recorder: their numbers
        self._reconciled = False
        self._live: set[str] = set()  # Ray trials started by this driver and not yet complete or failed
        if self.out.exists():  # a resumed study: its parts merged first
            compact(self.out)
        if has_results(self.out):
            for row in read_table(self.out, "trials").to_dict("records"):
                final = {k for k in row if k in FINAL or family_of(k, "trial") is not None}
                self.trials[row["trial_id"]] = {k: v for k, v in row.items() if k not in final}
                self.final[row["trial_id"]] = {k: row[k] for k in row if k in final}

    # Ray pickles its callbacks into the experiment state and unpickles them on Tuner.restore:
    # keep only the settings, and reload the trials from disk, so a resumed study loses nothing. The
    # folder is the one the driver runs now (a moved or copied study), not the pickled path
    # (vaesweep/study/relocation.py).
    def __getstate__(self):
        return {"out": self.out, "flush_every_s": self.flush_every_s, "progress": self.progress}

    def __setstate__(self, state):
        self.__init__(**{**state, "out": study_folder(state["out"])})

    # --- Ray Tune callback hooks ---------------------------------------------------------------
    def on_step_begin(self, iteration, trials, **info):
        if not self._reconciled:  # a restored study's trials are all loaded before its first step
            self._reconciled = True
            self.forget_lost(trials)

    def on_trial_start(self, iteration, trials, trial, **info):
        self._live.add(trial.trial_id)
        for row in self._rows(trial):
            row["status"] = "running"
        self._maybe_flush(trials)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self.add_result(trial.trial_id, result)
        for row, res in zip(self._rows(trial), result.get("packed", [result])):
            if res is None:  # a configuration of the pack that ended earlier
                continue
            row.update(status="running", error=None)  # reporting again: an earlier (retried) error is not its answer
            if "diverged" in res:
                row.update(status="failed", error=res["diverged"])
        self._maybe_flush(trials)

    def on_checkpoint(self, iteration, trials, trial, checkpoint, **info):
        # Ray snapshots the experiment right after (a resumed trial starts from this checkpoint and does not
        # report its epochs up to it again): every row reported so far goes to disk first, none lost to a
        # killed driver.
        self.flush(trials)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._live.discard(trial.trial_id)
        for row in self._rows(trial):
            if row.get("status") != "failed":
                row["status"] = "done"
        self.flush(trials)

    def on_trial_recover(self, iteration, trials, trial, **info):
        # failed with retries left (the spec's retries, Ray's FailureConfig): Ray restarts it from its last
        # checkpoint; its row stays running
        if self.progress is not None:
            for tid in _row_ids(trial):
                self.progress.note(f"{tid} failed ({_error_line(trial)}); retried from its last checkpoint")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._live.discard(trial.trial_id)
        for row in self._rows(trial):
            row.update(status="failed", error=_error_line(trial))
        self.flush(trials)

    def on_experiment_end(self, trials, **info):
        # Stopped by Ctrl+C (or SIGUSR1): Ray ends the experiment's running trials without completing them
        # (TERMINATED, no on_trial_complete); they resume from their checkpoints when the study runs again.
        for t in trials:
            if t.trial_id in self._live and t.status == "TERMINATED":
                for row in self._rows(t):
                    if row.get("status") != "failed":
                        row["status"] = "interrupted"
        summary = self.flush(trials)
        if self.progress is not None:
            self.progress.close(summary)
        compact(self.out)

    def forget_lost(self, trials) -> list[str]:
        """Drop the unfinished trials Ray's experiment does not hold: started by a driver killed before its
        next snapshot, they are gone from the restored study (the searcher asks for their places anew), so
        their rows would stay pending forever. Returns their ids."""
        held = {row_id for t in trials for row_id in _row_ids(t)}
        lost = [
            tid for tid, row in self.trials.items() if row.get("status") in ("pending", "running") and tid not in held
        ]
        if lost:
            for tid in lost:
                self.trials.pop(tid)
                self.final.pop(tid, None)
            drop_trials(self.out, set(lost))
            self.flush(trials)
        return lost

    # --- rows --------------------------------------------------------------------------------
    def add_result(self, trial_id: str, result: dict) -> None:
        if "packed" in result:  # a packed trial (vaesweep.engine.packing): one trial per configuration
            for i, res in enumerate(result["packed"]):
                if res is not None:  # None: the configuration ended in an earlier epoch
                    self.add_result(packed_id(trial_id, i), res)
            return
        epoch = result.get("epoch")
        if epoch is None:
            return
        row = {"trial_id": trial_id, **epoch_row(result)}
        self.new["epochs"][(trial_id, epoch)] = [row]
        self._finish(trial_id, row)
        if "latents" in result:
            latents = [
                {"trial_id": trial_id, "epoch": epoch, **{k: r[k] for k in latent_keys(r) if k in r}}
                for r in result["latents"]
            ]
            self.new["latent_history"][(trial_id, epoch)] = self.new["latents"][(trial_id,)] = latents
        if result.get("trace"):  # one row per trace point per variable, built as columns (the bulk of a study)
            points, dim = result["trace"], len(result["trace"][0]["var_mu"])
            n = len(points) * dim
            self.new["trace"][(trial_id, epoch)] = {
                "trial_id": np.full(n, trial_id, dtype=object),
                "epoch": np.full(n, epoch),
                "step": np.repeat([t["step"] for t in points], dim),
                "latent": np.tile(np.arange(dim), len(points)),
                "var_mu": np.ravel([t["var_mu"] for t in points]),
                "mean_sigma2": np.ravel([t["mean_sigma2"] for t in points]),
            }

    def _finish(self, trial_id: str, row: dict) -> None:
        """Keep the trial's final answer: the summary of its last epoch, epochs done, time spent."""
        final = self.final.get(trial_id, {})
        done, spent = (
            final.get("epochs_done"),
            [t for t in (final.get("time_total"), row.get("time_total")) if t is not None and not pd.isna(t)],
        )
        later = done is None or pd.isna(done) or row["epoch"] >= done
        summary = trial_row(row) if later else {k: v for k, v in final.items() if k not in FINAL}
        self.final[trial_id] = {
            **summary,
            "epochs_done": row["epoch"] if later else done,
            "time_total": max(spent) if spent else None,
        }

    def _rows(self, trial) -> list[dict]:
        """The rows of a Ray trial: its own, or one per configuration of a packed trial."""
        if PACK_KEY not in trial.config:
            return [self._row(trial.trial_id, trial.config)]
        return [
            self._row(packed_id(trial.trial_id, i), {**trial.config, **item})
            for i, item in enumerate(trial.config[PACK_KEY])
        ]

    def _row(self, trial_id: str, trial_config: dict) -> dict:
        row = self.trials.get(trial_id)
        if row is None:
            config = {k: _cell(v) for k, v in trial_config.items() if k in trial_fields()}
            row = self.trials[trial_id] = {"trial_id": trial_id, **config, "status": "pending", "error": None}
        return row

    def _sync_statuses(self, trials) -> None:
        for t in trials or []:
            for row in self._rows(t):
                self._sync_status(t, row)

    def _sync_status(self, t, row: dict) -> None:
        if t.status == "ERROR" and row.get("status") != "failed":
            row.update(status="failed", error=_error_line(t))
        elif t.status == "TERMINATED" and row.get("status") not in ("failed", "interrupted", "done"):
            # ended by Ray without completing (Ctrl+C before its first epoch): done only with an epoch to show
            row["status"] = "done" if self.final.get(row["trial_id"], {}).get("epochs_done") else "interrupted"

    def _maybe_flush(self, trials) -> None:
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush(trials)

    def flush(self, trials=None) -> pd.DataFrame:
        """Append the rows not flushed yet, one part per table, and rewrite the trials table (returned)."""
        self._sync_statuses(trials)
        self.out.mkdir(parents=True, exist_ok=True)
        for table, blocks in self.new.items():
            if blocks:
                append_part(_frame(list(blocks.values())), self.out, table, self._parts)
                blocks.clear()
        self._parts += 1
        summary = pd.DataFrame([_trial_line(row, self.final.get(tid, {})) for tid, row in self.trials.items()])
        write_table(summary, self.out / TRIALS)
        self._last_flush = time.monotonic()
        if self.progress is not None:
            self.progress.show(summary)
        return summary

    def tables(self) -> StudyTables:
        """Flush, then read the study back (``load_study``)."""
        self.flush()
        return load_study(self.out)


def _row_ids(trial) -> list[str]:
    """The study's trial ids of a Ray trial: its own, or one per configuration of a packed trial."""
    if PACK_KEY not in trial.config:
        return [trial.trial_id]
    return [packed_id(trial.trial_id, i) for i in range(len(trial.config[PACK_KEY]))]


def _trial_line(row: dict, final: dict) -> dict:
    """A trial's row of the trials table: config and status, its final answer, and why it stopped:
    the final report's ``stopped_reason`` (settled, budget), else failed, else scheduler (a trial that
    ended without reaching its final epoch: ASHA stopped it)."""
    line = {**row, **final}
    reason = line.get("stopped_reason")
    if row.get("status") == "failed":
        line["stopped_reason"] = "failed"
    elif row.get("status") == "done" and (reason is None or pd.isna(reason)):
        line["stopped_reason"] = "scheduler"
    return line


def _frame(blocks: list) -> pd.DataFrame:
    """The rows of the blocks: lists of row dicts, or dicts of columns (the trace)."""
    if isinstance(blocks[0], dict):
        return pd.DataFrame({k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]})
    return pd.DataFrame([r for b in blocks for r in b])


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
