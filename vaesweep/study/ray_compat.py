"""Every use of a private Ray name, in one place, and the Ray versions it was read from (CHECKED).

vaesweep leans on Ray internals where its public API has no door:
- a local-only Ray: ``ray._private.ray_constants.ENABLE_RAY_CLUSTER`` switched off while the node starts, so it
  stays on 127.0.0.1 (``local_only_node``; study/cluster.py), and the node's session folder
  (``ray._private.worker._global_node``, removed when the driver exits: ``session_dir``);
- Ray's token notice logger, silenced unless --verbose (``TOKEN_NOTICE_LOGGER``);
- a trial's checkpoint registered as the snapshot would have held it (``TrainingResult``, ``StorageContext``:
  study/recovery.py);
- the state of Ray Tune's ``OptunaSearch``: its Optuna study and trials, its finished trials and its start
  points (``optuna_study``, ``optuna_trials``, ``mark_completed``, ``start_points``, ``start_points_held``:
  study/searcher.py).

Each was read from Ray's source at the versions in CHECKED; pyproject.toml pins ``ray[tune]`` to them. Another
Ray is refused when this module loads (``RayVersionError``: one line naming the version and the fix), before any
of these names is touched. To move to a new Ray: read each use here against its source, then add its minor
version to CHECKED and widen the pin.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import ray

from vaesweep.config.errors import RayVersionError

CHECKED = ("2.60",)  # Ray minor versions whose internals this module was read against


def check_version(version: str = ray.__version__) -> None:
    """RayVersionError unless ``version`` is one of the CHECKED minor versions."""
    if ".".join(version.split(".")[:2]) not in CHECKED:
        raise RayVersionError(
            f"Ray {version} is installed but vaesweep was checked against Ray {', '.join(CHECKED)} "
            f"(vaesweep/study/ray_compat.py); install it with pip install 'ray[tune]=={CHECKED[-1]}.*'"
        )


check_version()

from ray._private import ray_constants  # noqa: E402
from ray._private import worker as ray_worker  # noqa: E402
from ray.train._internal.session import _TrainingResult as TrainingResult  # noqa: E402, F401  (Trial.on_checkpoint)
from ray.train._internal.storage import StorageContext  # noqa: E402, F401  (in the search algorithm's state)

# Ray's notice on every new local cluster ("Token authentication is enabled ..."), a warning by level only
TOKEN_NOTICE_LOGGER = logging.getLogger("ray._private.authentication.authentication_token_setup")


@contextmanager
def local_only_node() -> Iterator[None]:
    """While a local node starts: Ray's own switch for a local-only Ray (False on macOS/Windows), so the node
    keeps 127.0.0.1 and its servers listen there only."""
    multi_node = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = multi_node


def session_dir() -> str:
    """The session folder of the Ray node this driver started (/tmp/ray/session_*)."""
    return ray_worker._global_node.get_session_dir_path()


# --- ray.tune.search.optuna.OptunaSearch's state ------------------------------------------------------------------


def optuna_study(search):
    """The Optuna study an OptunaSearch asks and tells."""
    return search._ot_study


def optuna_trials(search) -> dict:
    """Ray trial id -> the Optuna trial an OptunaSearch asked for it."""
    return search._ot_trials


def mark_completed(search, trial_id: str) -> None:
    """Count ``trial_id`` as complete without telling Optuna again."""
    search._completed_trials.add(trial_id)


def start_points(search) -> list[dict]:
    """The start points (``points_to_evaluate``) an OptunaSearch was given."""
    return search._points_to_evaluate


@contextmanager
def start_points_held(search) -> Iterator[list[dict]]:
    """Within: the search holds no start points (so OptunaSearch does not enqueue them itself); yields them."""
    points, search._points_to_evaluate = search._points_to_evaluate, []
    try:
        yield points
    finally:
        search._points_to_evaluate = points
