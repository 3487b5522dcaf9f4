"""Hardening of the study folder: the name rule, corrupt or foreign folders, one driver per folder,
and opt-in tracking (TensorBoard, MLflow) through Ray Tune's logger callbacks."""

import json
import os
import re
import socket
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from conftest import vaesweep_cli
from test_study import SMOKE, write_study

from vaesweep.cli.main import main
from vaesweep.study.lock import INFO_FILE, StudyInUse, driver_lock
from vaesweep.study.tables import StudyFolderError, load_study
from vaesweep.study.tracking import scalar_metrics


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vaesweep: error:"), err
    return err


# --- the name rule ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [".", "..", "a/b", "../up", "a\\b", ""])
def test_study_name_is_one_folder_name(tmp_path, capsys, name):
    spec = {**yaml.safe_load(SMOKE.read_text()), "name": name}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    storage = tmp_path / "store" / "runs"
    assert main(["run", str(path), "--storage", str(storage)]) == 2
    err = one_error_line(capsys)
    assert "name: a study name is one folder name" in err, err
    assert not (tmp_path / "store").exists()


# --- corrupt or foreign study folders -------------------------------------------------------------


def _garbage_table(study):
    (study / "trials.parquet").write_bytes(os.urandom(2000))
    return study / "trials.parquet", "is not a vaesweep results table (Parquet magic bytes not found in footer)"


def _foreign_table(study):
    pd.DataFrame({"a": [1, 2], "b": ["x", "y"]}).to_parquet(study / "trials.parquet")
    return study / "trials.parquet", "is not a vaesweep results table (no trial_id, status columns)"


def _foreign_epochs(study):
    pd.DataFrame({"trial_id": ["t1"], "status": ["done"]}).to_parquet(study / "trials.parquet")
    (study / "epochs.parquet").write_bytes(b"")
    return study / "epochs.parquet", "is not a vaesweep results table (Parquet file size is 0 bytes)"


def _foreign_spec(study):
    pd.DataFrame({"trial_id": ["t1"], "status": ["done"]}).to_parquet(study / "trials.parquet")
    (study / "study.yaml").write_text("- just\n- a list\n")
    return study / "study.yaml", "is not a vaesweep study spec (no study name in it)"


def _not_yaml_spec(study):
    pd.DataFrame({"trial_id": ["t1"], "status": ["done"]}).to_parquet(study / "trials.parquet")
    (study / "study.yaml").write_text("name: [unclosed\n")
    return study / "study.yaml", "is not a vaesweep study spec (not YAML: ParserError)"


@pytest.mark.parametrize("spoil", [_garbage_table, _foreign_table, _foreign_epochs, _foreign_spec, _not_yaml_spec])
def test_corrupt_or_foreign_folder_one_line_exit_2(tmp_path, capsys, spoil):
    import ray

    study = tmp_path / "runs" / "x"
    study.mkdir(parents=True)
    file, problem = spoil(study)
    message = (
        f"{file} {problem}; delete {study} to start the study afresh, "
        "or give the folder of a vaesweep study (e.g. runs/smoke)"
    )
    with pytest.raises(StudyFolderError) as caught:
        load_study(study)
    assert str(caught.value) == message
    for argv in (["status", str(study)], ["report", str(study)]):
        assert main(argv) == 2
        assert one_error_line(capsys) == f"vaesweep: error: {message}"
    before = {p: p.read_bytes() for p in study.rglob("*") if p.is_file()}
    assert main(["run", str(write_study(tmp_path, "x")), "--storage", str(tmp_path / "runs")]) == 2
    assert one_error_line(capsys) == f"vaesweep: error: {message}"
    assert {p: p.read_bytes() for p in study.rglob("*") if p.is_file()} == before  # nothing written
    assert not ray.is_initialized()  # refused before Ray started


# --- one driver per study folder --------------------------------------------------------------------


def test_stale_lock_of_a_dead_driver_is_taken_over_with_a_warning(tmp_path, capsys):
    study = tmp_path / "runs" / "x"
    study.mkdir(parents=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = {"pid": int(dead.stdout), "host": socket.gethostname(), "since": "2026-01-01 00:00:00 UTC"}
    (study / INFO_FILE).write_text(json.dumps(stale))
    with driver_lock(study):
        held = json.loads((study / INFO_FILE).read_text())
        assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    err = capsys.readouterr().err.strip()
    assert err == (
        f"vaesweep: warning: taking over the lock of driver pid {stale['pid']} on {stale['host']} "
        "(since 2026-01-01 00:00:00 UTC), which is no longer running"
    )
    assert not (study / INFO_FILE).exists()  # released at exit


def test_lock_is_released_on_an_exception_and_a_new_folder_left_empty_is_removed(tmp_path):
    study = tmp_path / "runs" / "x"
    with pytest.raises(KeyboardInterrupt):
        with driver_lock(study):
            assert json.loads((study / INFO_FILE).read_text())["pid"] == os.getpid()
            raise KeyboardInterrupt
    assert not (tmp_path / "runs").exists()
    with driver_lock(study):  # free again
        (study / "study.yaml").write_text("name: x\n")
    assert sorted(p.name for p in study.iterdir()) == ["driver.lock", "study.yaml"]


def test_lock_of_a_driver_on_another_host_is_honoured(tmp_path):
    study = tmp_path / "x"
    study.mkdir()
    other = {"pid": 4321, "host": "elsewhere", "since": "2026-01-01 00:00:00 UTC"}
    (study / INFO_FILE).write_text(json.dumps(other))
    with pytest.raises(
        StudyInUse,
        match=f"in use by driver pid 4321 on host elsewhere since 2026-01-01 00:00:00 UTC;"
        f" .*; if that driver is gone, delete {study / INFO_FILE}$",
    ):
        with driver_lock(study):
            pass
    assert json.loads((study / INFO_FILE).read_text()) == other


# --- tracking -------------------------------------------------------------------------------------


def test_tracking_gets_the_scalar_metrics_only():
    result = {
        "epoch": 2,
        "elbo": -80.5,
        "n_active": 3,
        "evaluated": True,
        "node": "n1",
        "config": {"lam": 1},
        "latents": [{"latent": 0, "kl": 1.0}],
        "packed": [{"elbo": -1.0, "latents": []}, {"elbo": -2.0}],
    }
    assert scalar_metrics(result) == {"epoch": 2, "elbo": -80.5, "n_active": 3, "c0/elbo": -1.0, "c1/elbo": -2.0}


def test_tracking_without_its_extra_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    path = write_study(tmp_path, "tracked", callbacks=["tensorboard", "mlflow"])
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert (
        one_error_line(capsys) == "vaesweep: error: callbacks: mlflow needs the extra: pip install 'vaesweep[mlflow]'"
    )
    assert not (tmp_path / "runs").exists()


def test_unknown_callback(tmp_path, capsys):
    path = write_study(tmp_path, "tracked", callbacks=["wandb"])
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert "callbacks.0" in one_error_line(capsys)


# --- two real drivers, and a tracked study -------------------------------------------------------


def _event_scalars(folder) -> dict[str, list[float]]:
    """tag -> values of the TensorBoard scalars in the event files under ``folder``."""
    from tensorboardX.proto import event_pb2

    out: dict[str, list[float]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data, pos = path.read_bytes(), 0
        while pos < len(data):  # TFRecord: length (8), crc (4), payload, crc (4)
            n = int.from_bytes(data[pos : pos + 8], "little")
            event = event_pb2.Event.FromString(data[pos + 12 : pos + 12 + n])
            pos += 12 + n + 4
            for v in event.summary.value:
                out.setdefault(v.tag, []).append(v.simple_value)
    return out


@pytest.mark.slow
def test_second_driver_refused_and_a_tracked_study(tmp_path):
    from mlflow.tracking import MlflowClient

    epochs = 2
    path = write_study(
        tmp_path,
        "tracked",
        base={"epochs": epochs, "max_train": 500, "max_eval": 200, "hidden": [32, 16]},
        space={"latent_dim": {"grid": [2, 4]}, "lam": {"grid": [1.0]}},
        callbacks=["tensorboard", "mlflow"],
    )
    storage, study = tmp_path / "runs", tmp_path / "runs" / "tracked"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    first = subprocess.Popen(
        [sys.executable, "-m", "vaesweep", "run", str(path), "--storage", str(storage)],
        cwd=tmp_path,
        env={**env, "PYTHONUNBUFFERED": "1"},
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        while not (study / INFO_FILE).exists() and first.poll() is None:
            time.sleep(0.2)
        second = vaesweep_cli("run", path, "--storage", storage)
        out, err = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            first.kill()
    assert second.returncode == 2
    assert re.fullmatch(
        re.escape(
            f"vaesweep: error: study folder {study} is in use by driver pid {first.pid} on host "
            f"{socket.gethostname()} since "
        )
        + r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC"
        + re.escape(f"; wait for it or stop it (kill {first.pid}); a lock of a dead process is taken over"),
        second.stderr.strip(),
    ), second.stderr
    assert first.returncode == 0, err[-3000:]
    t = load_study(study)
    assert len(t.trials) == 2 and (t.trials["status"] == "done").all()
    assert not (study / INFO_FILE).exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs", "tracked.yaml"]  # nothing outside the study

    # MLflow: one run per trial, params and per-epoch metric histories, in runs/<name>/mlflow.db
    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("tracked")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    assert sorted(int(r.data.params["latent_dim"]) for r in runs) == [2, 4]
    assert {r.data.params["lam"] for r in runs} == {"1.0"}
    for run in runs:
        for metric in ("n_active", "law_residual_max", "elbo", "mi"):
            history = client.get_metric_history(run.info.run_id, metric)
            assert [m.step for m in sorted(history, key=lambda m: m.step)] == list(range(1, epochs + 1))
    final = {int(r.data.params["latent_dim"]): r.data.metrics for r in runs}
    rows = t.trials.set_index("latent_dim")
    for dim in (2, 4):
        assert final[dim]["n_active"] == rows.loc[dim, "n_active"]
        assert final[dim]["elbo"] == pytest.approx(rows.loc[dim, "elbo"])
        assert final[dim]["nll_iw"] == pytest.approx(rows.loc[dim, "nll_iw"])  # the final epoch's (issue 26)

    # TensorBoard: event files inside the study folder, the same scalars per epoch
    scalars = _event_scalars(study / "tune")
    for metric in ("n_active", "law_residual_max", "elbo", "mi"):
        assert len(scalars[f"ray/tune/{metric}"]) == 2 * epochs, sorted(scalars)
    assert len(scalars["ray/tune/nll_iw"]) == 2  # once per trial, at its final epoch
    assert not any("latents" in tag for tag in scalars)
