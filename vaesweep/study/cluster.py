"""The Ray cluster a study runs on: a local Ray of its own (127.0.0.1, no dashboard) or the one at ``--address``
(or $RAY_ADDRESS), checked to answer and to hold one trial; and what Ray prints (``ray_output``)."""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket

import ray

from vaesweep.config.spec import SpecError, StudySpec
from vaesweep.study.ray_compat import TOKEN_NOTICE_LOGGER, local_only_node, session_dir

# Ray Tune's "The `X` operation took 0.6 s, which may be a performance bottleneck" (ray.tune.utils.util.warn_if_slow,
# at 0.5 s): on a busy machine one every few seconds; the first one is shown, every one with --verbose
SLOW_LOGGERS = ("ray.tune.utils.util", "ray.tune.execution.tune_controller")


class FirstSlowWarning(logging.Filter):
    """Lets through the first of Ray Tune's slow-operation warnings and every other record."""

    def __init__(self):
        super().__init__()
        self.seen = False

    def filter(self, record: logging.LogRecord) -> bool:
        if "may be a performance bottleneck" not in record.getMessage():
            return True
        first, self.seen = not self.seen, True
        return first


def ray_output(verbose: bool) -> None:
    """Ray's own banners (its token notice, the "Configuration for experiment" box, "View detailed results
    here") only when ``verbose``; its other warnings and errors always. Ray Tune's new output engine prints
    the box and the results path even at verbosity 0 (ray/tune/tune.py), its old one with verbosity 0
    nothing (RunConfig(verbose=0), build_tuner): RAY_AIR_NEW_OUTPUT chooses, read when ``fit`` starts. Of Ray
    Tune's slow-operation warnings only the first (FirstSlowWarning) unless ``verbose``."""
    os.environ["RAY_AIR_NEW_OUTPUT"] = "1" if verbose else "0"
    TOKEN_NOTICE_LOGGER.setLevel(logging.NOTSET if verbose else logging.ERROR)
    once = FirstSlowWarning()
    for name in SLOW_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, FirstSlowWarning)]:
            logger.removeFilter(old)
        if not verbose:
            logger.addFilter(once)


def init_ray(address: str | None) -> None:
    """Join ``address`` (or $RAY_ADDRESS); else start a local Ray on 127.0.0.1, dashboard off."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    # Every checkpoint forces an experiment snapshot (num_to_keep=1): that is what makes a killed
    # driver resumable without re-running finished trials, so Ray's warning about it is noise.
    # Ray's JSON logger stays (added in build_tuner: Ray's ResultGrid and the tests read its result.json;
    # its CSV logger's progress.csv nothing reads, so it is left out); TensorBoard and MLflow are opt-in
    # (the spec's callbacks, vaesweep/study/tracking.py: scalars only, no per-latent lists).
    os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
    os.environ.setdefault("TUNE_DISABLE_STRICT_METRIC_CHECKING", "1")  # a diverged trial's last report
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    # address="local": always a new Ray of our own, never some other Ray found on this machine (nor
    # the one a stale /tmp/ray/ray_current_cluster names). On Linux Ray swaps a loopback node address
    # for the machine's (services.resolve_ip_for_localhost) and its servers then listen on every
    # interface; with Ray's own switch for a local-only Ray (ray_compat.local_only_node) the node stays
    # 127.0.0.1, and the GCS, raylet, workers, driver and runtime-env agent all listen on 127.0.0.1 only
    # (tests/test_network.py checks a running study). Switched only while this node starts.
    with local_only_node():
        ray.init(
            address="local",
            _node_ip_address="127.0.0.1",
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    # The local Ray's session folder (/tmp/ray/session_*: its logs and sockets, ~1.5 MB a run) goes when this
    # driver exits; a trial's error and logs stay in the study folder (tune/).
    atexit.register(_remove_session, session_dir())


def _remove_session(session: str) -> None:
    """Stop the local Ray this driver started, then remove its session folder."""
    ray.shutdown()
    shutil.rmtree(session, ignore_errors=True)


def check_address(address: str | None, timeout_s: float = 10.0) -> None:
    """A cluster address (host:port of its head) that nothing answers is refused within ``timeout_s``, naming it
    (``ray.init`` would retry it for minutes without a word). ``auto``, ``local`` and ``ray://`` addresses are
    Ray's to resolve."""
    if not address or address in ("auto", "local") or "://" in address:
        return
    host, _, port = address.rpartition(":") if ":" in address else (address, "", "6379")
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except (OSError, ValueError) as err:
        raise SpecError(
            f"--address {address}: no Ray cluster answers there ({err}); start one with `ray start --head` "
            "or give the address its head printed"
        ) from None


def check_resources(spec: StudySpec) -> None:
    """A trial that asks for more than the cluster has would wait forever: refuse it up front."""
    have = ray.cluster_resources()
    for key, need in (("GPU", spec.resources.gpu), ("CPU", spec.resources.cpu)):
        if need > have.get(key, 0):
            raise SpecError(
                f"resources.{key.lower()}: each trial asks for {need:g} {key} but the Ray cluster "
                f"has {have.get(key, 0):g}; lower resources.{key.lower()} or join a larger cluster with --address"
            )


class _NoRayResumeHint(logging.Filter):
    """Ray Tune's own advice after Ctrl+C names its Python API (Tuner.restore); the vaesweep command says
    "run the same command again to resume" instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "has been interrupted" not in record.getMessage()


logging.getLogger("ray.tune.tune").addFilter(_NoRayResumeHint())
