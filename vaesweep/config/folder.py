"""The study folder, ``runs/<name>/``: the name of every file in it, and which trials count as settled.

The one owner of these facts (as vaesweep/config/metrics.py owns the metric keys): the driver (study/), the
commands (cli/) and the charts (analysis/) read them here. Plain Python: a file name is a string, and the settled
rule works on any table of trials (a pandas DataFrame) without importing pandas.

    runs/<name>/
      study.yaml              the spec the study was run with (SPEC_COPY)
      versions.json           the versions of Python and the packages that ran it
      trials.parquet ...      the results tables (vaesweep/study/tables.py: table_file, parts_folder)
      lambda_star.parquet     lambda* per setting of a search (Sec. 6.1)
      method.parquet          experiment: method's answer per setting, and method_trials.parquet its evidence
      optuna.db               the Optuna studies of a search
      driver.lock, driver.json  the driver that holds the folder (vaesweep/study/lock.py)
      mlflow.db, mlruns/      the MLflow store, with ``callbacks: [mlflow]``
      damaged/                table parts that could not be read, moved aside
      tune/[search/]          Ray Tune's experiment(s), with the trials' checkpoints
      report/index.html       the report (analysis/report.py)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPEC_COPY = "study.yaml"
VERSIONS = "versions.json"
LAMBDA_STAR = "lambda_star.parquet"
METHOD = "method.parquet"
METHOD_TRIALS = "method_trials.parquet"
OPTUNA_DB = "optuna.db"
LOCK_FILE, DRIVER_INFO = "driver.lock", "driver.json"
MLFLOW_DB, MLFLOW_ARTIFACTS = "mlflow.db", "mlruns"
DAMAGED = "damaged"
RAY_FOLDER = "tune"  # Ray Tune's experiments
SEARCH_FOLDER = "search"  # under RAY_FOLDER: the experiment of a ``search: optuna`` study
REPORT_FOLDER = "report"
REPORT_PAGE = "index.html"
TMP_SUFFIX = ".parquet.tmp"  # a table or part being written, renamed into place when whole


def table_file(table: str) -> str:
    """A results table's compacted file, e.g. 'trials.parquet'."""
    return f"{table}.parquet"


def parts_folder(table: str) -> str:
    """Where a running study appends a table's new rows, e.g. 'epochs.parts'."""
    return f"{table}.parts"


TRIALS = table_file("trials")


def has_results(folder: str | Path) -> bool:
    """Whether ``folder`` holds a study's results (its trials table)."""
    return (Path(folder) / TRIALS).exists()


# --- which trials count: settled ones (Sec. 3, vaesweep/engine/settle.py) -----------------------------------------

SETTLED = "settled"  # the trials' and epochs' column


def settled_known(trials: Any) -> bool:
    """Whether the study recorded the settled status (a study from before the column has not)."""
    return SETTLED in trials


def counts(trials: Any) -> Any:
    """True for each trial (row of a DataFrame) whose numbers count: its collapse settled, or every trial of a
    study recorded before the ``settled`` column (its status unknown, the report's first line says so)."""
    if not settled_known(trials):
        return trials.assign(**{SETTLED: True})[SETTLED]
    return trials[SETTLED].eq(True)
