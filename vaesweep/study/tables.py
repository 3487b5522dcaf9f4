"""Study results as tidy Parquet tables, written by the driver while the study runs.

In ``runs/<name>/``:

- ``trials.parquet``: one row per trial: ``trial_id``, config columns, final summary metrics (the
  trial-level metrics of vaesweep/config/metrics.py, from its last epoch), ``status`` (pending /
  running / done / failed, or interrupted: stopped by Ctrl+C, resumed when the study runs again),
  ``error``, ``epochs_done`` and ``time_total``;
- ``epochs.parquet``: one row per trial per epoch (train loss parts, timing, collapse summary,
  ``settled`` / ``settled_step``: whether the collapse had settled, vaesweep/engine/settle.py);
- ``latents.parquet``: one row per trial per latent variable, at its last evaluated epoch;
- ``latent_history.parquet``: the same per-variable metrics at every evaluated epoch (Fig. 2, 7);
- ``trace.parquet``: per-variable minibatch var_mu every K steps, when ``track_every`` is set.

While a study runs, each flush of ``vaesweep.study.recorder.Recorder`` (a Ray Tune callback) appends
only its new rows, as ``<table>.parts/<seq>.parquet`` (the small trials table is rewritten whole);
``compact`` merges the parts into ``<table>.parquet`` at the end of the study and when it resumes.
A later part replaces the earlier rows of the same block (one trial's epoch, or one trial's latents):
a resumed trial re-reports the epochs after its last checkpoint, and no row is doubled.

This module needs only pandas and pyarrow, so a finished study reads back without Ray or torch.
``load_study(path)`` reads compacted tables and parts alike; a folder whose tables or ``study.yaml`` are
not vaesweep's (garbage bytes, another tool's Parquet) raises ``StudyFolderError`` naming the file and the fix.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import yaml

from vaesweep.config.errors import StudyFolderError
from vaesweep.config.folder import DAMAGED, SPEC_COPY, TMP_SUFFIX, has_results, parts_folder, table_file
from vaesweep.study.progress import Progress  # noqa: F401  (older experiment snapshots pickled the Recorder's here)

TABLES = ("trials", "epochs", "latents", "latent_history", "trace")
# the block a later report replaces whole, per appended table
BLOCKS = {
    "epochs": ("trial_id", "epoch"),
    "latents": ("trial_id",),
    "latent_history": ("trial_id", "epoch"),
    "trace": ("trial_id", "epoch"),
}
ORDER = {"epochs": ["trial_id", "epoch"], "latents": ["trial_id", "latent"]}  # rows sorted; the others as reported


@dataclass
class StudyTables:
    trials: pd.DataFrame
    epochs: pd.DataFrame
    latents: pd.DataFrame
    latent_history: pd.DataFrame
    trace: pd.DataFrame


REQUIRED_COLUMNS = {"trials": ("trial_id", "status")}  # the other tables: trial_id


def load_study(path: str | Path) -> StudyTables:
    """The DataFrames of a study directory (``runs/<name>``); missing tables are empty."""
    path = _study_folder(path)
    return StudyTables(**{t: _consistent(read_table, path, t) for t in TABLES})


def _consistent(read, *args, attempts: int = 50):
    """``read(*args)``, read again while a file vanishes under it: a driver compacting the study renames the
    merged table into place, then removes its parts, so a reader that raced it finds the merged file next time
    (never a half-merged table: every file is renamed into place whole)."""
    for _ in range(attempts - 1):
        try:
            return read(*args)
        except FileNotFoundError:
            time.sleep(0.1)
    return read(*args)


def load_trials(path: str | Path) -> pd.DataFrame:
    """``load_study(path).trials`` without reading the other tables' rows (status, lambda*, the method's
    driver: the epochs, latent and trace tables grow with the study, the trials table with its trials only).
    Every table's footers are still checked, so a foreign or corrupt folder is refused as load_study refuses it."""
    path = _study_folder(path)
    _consistent(check_study_folder, path)
    return _consistent(read_table, path, "trials")


def _study_folder(path: str | Path) -> Path:
    """``path`` once it holds a study's results and its spec copy is vaesweep's."""
    path = Path(path)
    if not has_results(path):
        raise FileNotFoundError(f"no study results in '{path}'; run a study first (python -m vaesweep run STUDY.yaml)")
    read_spec_copy(path)
    return path


def check_study_folder(path: Path, warn: bool = True) -> None:
    """Raise ``StudyFolderError`` unless the vaesweep files already in ``path`` are readable and vaesweep's.
    Reads each table's footers only (the Recorder reads the rows themselves when the study resumes). A damaged
    part is not a reason to refuse the folder (``warn``: say it here; the driver says it when it moves it aside)."""
    read_spec_copy(path)
    if has_results(path):  # the tables load_study would read
        for table in TABLES:
            _files(path, table, warn)


def compact(path: Path) -> None:
    """Merge each table's parts into ``<table>.parquet`` (what ``load_study`` reads), then remove the parts.
    The large tables (trace, latent_history) stream through one file at a time, so the driver never holds
    them whole. For the driver only (it holds the study's lock): first the temporary files a killed driver
    left are removed and damaged parts moved aside (``quarantine``)."""
    remove_temporaries(path)
    quarantine(path)
    for table, key in BLOCKS.items():
        parts = _parts(path, table)
        if not parts:
            continue
        if table in ORDER:  # small: sorted in memory
            write_table(read_table(path, table), path / table_file(table))
        else:
            _stream(_files(path, table), list(key), path / table_file(table))
        for part in parts:
            part.unlink()
        try:
            parts[0].parent.rmdir()
        except OSError:  # something else landed in the folder: harmless, its parts are merged
            pass


def remove_temporaries(path: Path) -> list[Path]:
    """Remove the ``*.parquet.tmp`` files a driver killed mid-write left (a table's or a part's); returns them.
    Every write goes to such a file first and is renamed into place (``write_table``), so none holds rows
    that a table lacks."""
    found = [*path.glob(f"*{TMP_SUFFIX}"), *path.glob(f"*.parts/*{TMP_SUFFIX}")]
    for tmp in found:
        tmp.unlink(missing_ok=True)
    return found


def quarantine(path: Path) -> list[Path]:
    """Move every damaged part (unreadable, or not vaesweep's) to ``<study>/damaged/`` with a one-line warning
    naming it; the study goes on without its rows. Returns where they went."""
    moved = []
    for table in BLOCKS:
        for part in _parts(path, table):
            if _problem(table, part) is None:
                continue
            aside = path / DAMAGED / f"{table}-{part.name}"
            aside.parent.mkdir(exist_ok=True)
            os.replace(part, aside)
            print(
                f"vaesweep: warning: {part} was damaged ({_problem(table, aside)}); moved to {aside}, its rows are "
                "not in the tables (a resumed trial reports its later epochs again)",
                file=sys.stderr,
                flush=True,
            )
            moved.append(aside)
    return moved


def drop_trials(path: Path, trial_ids: set[str]) -> None:
    """Remove every row of these trials from the appended tables (compacted first; streamed batch by batch)."""
    compact(path)
    drop = pa.array(sorted(trial_ids))
    for table in BLOCKS:
        file = path / table_file(table)
        if not file.exists():
            continue
        source = pq.ParquetFile(file)
        tmp = file.with_suffix(TMP_SUFFIX)
        with pq.ParquetWriter(tmp, source.schema_arrow) as writer:
            for batch in source.iter_batches(batch_size=1 << 20):
                rows = pa.Table.from_batches([batch])
                writer.write_table(rows.filter(pc.invert(pc.is_in(rows["trial_id"], value_set=drop))))
        os.replace(tmp, file)


def _stream(files: list[Path], key: list[str], out: Path) -> None:
    """Write the rows of ``files`` that ``read_table`` keeps, in the same order, batch by batch."""
    owner = pd.concat(
        [
            pq.read_table(f, columns=key).to_pandas().drop_duplicates().assign(_file=i)
            for i, f in enumerate(files)
            if f.parent.name.endswith(".parts")
        ]
    )
    owner = owner.groupby(key)["_file"].max()  # the last part that wrote each block
    schema = pa.unify_schemas([pq.read_schema(f) for f in files], promote_options="permissive").remove_metadata()
    tmp = out.with_suffix(TMP_SUFFIX)
    with pq.ParquetWriter(tmp, schema) as writer:
        for i, f in enumerate(files):
            for batch in pq.ParquetFile(f).iter_batches(batch_size=1 << 20):
                blocks = batch.select(key).to_pandas()
                index = pd.MultiIndex.from_frame(blocks) if len(key) > 1 else pd.Index(blocks[key[0]])
                keep = owner.reindex(index).fillna(i).to_numpy() == i  # a block no part wrote: the compacted file's
                rows = pa.Table.from_batches([batch]).filter(pa.array(keep))
                writer.write_table(_conform(rows, schema))
    os.replace(tmp, out)


def _conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """``rows`` with the columns of ``schema``, in its order and types (nulls where a file had none)."""
    return pa.table(
        [rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(len(rows), f.type) for f in schema],
        schema=schema,
    )


def append_part(df: pd.DataFrame, path: Path, table: str, seq: int) -> None:
    """Write ``df`` as part ``seq`` of ``table`` (read after every part with a lower number)."""
    folder = path / parts_folder(table)
    folder.mkdir(exist_ok=True)
    write_table(df, folder / f"{seq:06d}.parquet")


def write_table(df: pd.DataFrame, file: Path) -> None:
    """Write atomically: a reader sees the old file or the new one, never half of one."""
    tmp = file.with_suffix(TMP_SUFFIX)
    df.to_parquet(tmp, index=False)
    os.replace(tmp, file)


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
        raise _foreign(copy, path, "is not a vaesweep study spec", problem)
    return spec


def _parts(path: Path, table: str) -> list[Path]:
    folder = path / parts_folder(table)
    return sorted(folder.glob("*.parquet"), key=lambda p: int(p.stem)) if folder.is_dir() else []


def _files(path: Path, table: str, warn: bool = True) -> list[Path]:
    """The table's files in the order they were written (compacted file, then parts), each checked. A damaged
    part is left out with a one-line warning (the driver moves it aside when the study runs: ``quarantine``);
    a damaged compacted table is refused (StudyFolderError)."""
    main = [_check_table(path, table, path / table_file(table))] if (path / table_file(table)).exists() else []
    parts = []
    for part in _parts(path, table):
        problem = _problem(table, part)
        if problem is None:
            parts.append(part)
        elif warn and part.exists():  # not a part merged away meanwhile (a reader racing compact)
            print(f"vaesweep: warning: {part} is damaged ({problem}); its rows are left out", file=sys.stderr)
    return main + parts


def read_table(path: Path, table: str) -> pd.DataFrame:
    """The table's rows: of each block (BLOCKS), only those of the last file that wrote it."""
    files = _files(path, table)
    if not _parts(path, table):  # a compacted table reads as it was written
        return pd.read_parquet(files[0]) if files else pd.DataFrame()
    frames = [pd.read_parquet(f).assign(_file=i) for i, f in enumerate(files)]
    df = pd.concat([f for f in frames if len(f)], ignore_index=True)
    df = df[df["_file"] == df.groupby(list(BLOCKS[table]))["_file"].transform("max")].drop(columns="_file")
    if table in ORDER:
        df = df.sort_values(ORDER[table], kind="stable")
    return df.reset_index(drop=True).infer_objects()


def _check_table(path: Path, table: str, file: Path) -> Path:
    """The file, once its Parquet footer reads and names vaesweep's key columns."""
    problem = _problem(table, file)
    if problem is not None:
        raise _foreign(file, path, "is not a vaesweep results table", problem)
    return file


def _problem(table: str, file: Path) -> str | None:
    """Why ``file`` is not a readable vaesweep table of ``table`` (None: it is). A file removed meanwhile
    raises FileNotFoundError (a reader that raced the driver's compaction reads again: ``_consistent``)."""
    try:
        columns = pq.read_schema(file).names
    except FileNotFoundError:
        raise
    except (pa.ArrowException, OSError) as err:
        if not file.exists():
            raise FileNotFoundError(file) from None
        return str(err).split("': ", 1)[-1].split(". ")[0].rstrip(".")  # drop pyarrow's own path and advice
    missing = [c for c in REQUIRED_COLUMNS.get(table, ("trial_id",)) if c not in columns]
    if columns and missing:  # an empty table (no trials yet) has no columns
        return f"no {', '.join(missing)} column" + "s" * (len(missing) > 1)
    return None


def _foreign(file: Path, study: Path, what: str, why: str) -> StudyFolderError:
    return StudyFolderError(
        f"{file} {what} ({why}); delete {study} to start the study afresh, "
        f"or give the folder of a vaesweep study (e.g. runs/smoke)"
    )


def best_trials(trials: pd.DataFrame, metric: str, mode: str, n: int = 5) -> pd.DataFrame:
    if metric not in trials or not len(trials):
        return trials.iloc[:0]
    scored = trials[trials["status"] != "failed"].dropna(subset=[metric])
    return scored.sort_values(metric, ascending=(mode == "min")).head(n)


def describe(row) -> str:
    keys = ("arch", "latent_dim", "lam", "seed")
    return " ".join(f"{k}={row[k]}" for k in keys if k in row and pd.notna(row[k]))
