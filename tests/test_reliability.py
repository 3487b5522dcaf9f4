"""A study folder you can move, hand over, interrupt and open safely (README: Reliability).

One small Ray study per case that needs Ray (a killed driver, then its folder copied and moved); the rest at
unit level: the Recorder and tables without Ray, the spec validator, the report's escaping, checkpoints."""

import html
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import ray.cloudpickle as cloudpickle
import torch
import yaml
from conftest import ROOT, epoch_rows, killed_driver, vaesweep_cli
from test_report import synthetic_study
from test_study import KILL_AT_FIRST_COMPLETION, write_study
from test_study_folder import one_error_line
from test_tables import run_trial, trial

from analysis.report import build_report
from vaesweep.cli import study as cli_study
from vaesweep.cli.main import main
from vaesweep.config.folder import OPTUNA_DB as DB_FILE
from vaesweep.config.search import Objective, Sampler
from vaesweep.config.spec import load_spec, spec_from_dict
from vaesweep.engine.checkpoints import CHECKPOINT_FILE, CheckpointError, load_run, save_run
from vaesweep.engine.trial import TrialRun
from vaesweep.study import lock, runner, trainables
from vaesweep.study.recorder import Recorder
from vaesweep.study.relocation import running_in
from vaesweep.study.runner import interrupted
from vaesweep.study.searcher import make_search
from vaesweep.study.tables import compact, load_study
from vaesweep.study.tracking import tracking_callbacks
from vaesweep.study.tuner import LambdaStarWriter

SMALL = {
    "base": {"epochs": 3, "max_train": 256, "max_eval": 128, "hidden": [32], "fid": False},
    "space": {"latent_dim": {"grid": [2, 4, 8]}, "lam": {"grid": [1.0]}},
    "max_concurrent": 1,
}


def files(folder) -> dict:
    """Every file under ``folder`` with its bytes and modification time."""
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
def test_a_copied_then_moved_study_resumes_where_it_is_and_never_writes_to_its_old_path(tmp_path):
    path = write_study(tmp_path, "moved", **SMALL)
    first, copy, moved = (tmp_path / d / "runs" for d in ("first", "copy", "moved"))
    killed_driver(KILL_AT_FIRST_COMPLETION, path, first)
    before = load_study(first / "moved")
    finished = set(before.trials.loc[before.trials["status"] == "done", "trial_id"])
    assert finished and len(finished) < 3  # killed mid-study

    shutil.copytree(first, copy)
    original = files(first)
    res = vaesweep_cli("run", path, "--storage", copy)
    assert res.returncode == 0, res.stderr[-3000:]
    assert files(first) == original  # the original study is not touched: a copy is a separate study
    after = load_study(copy / "moved")
    assert len(after.trials) == 3 and (after.trials["status"] == "done").all()
    assert len(after.epochs) == 3 * 3 and not after.epochs.duplicated(["trial_id", "epoch"]).any()
    pd.testing.assert_frame_equal(epoch_rows(before, finished), epoch_rows(after, finished))

    shutil.move(copy, moved)  # a finished study moved: nothing trained again, the old path not recreated
    res = vaesweep_cli("run", path, "--storage", moved)
    assert res.returncode == 0, res.stderr[-3000:]
    assert not copy.exists()
    pd.testing.assert_frame_equal(load_study(moved / "moved").epochs, after.epochs)
    assert f"results: {moved / 'moved'}" in res.stdout


# --- the report escapes every string from a spec, a path or an error ------------------------------

SCRIPT, IMG, BOLD = "<script>alert(1)</script>", "npz:/x/<img src=x onerror=alert(2)>.npz", "<b>boom</b>"


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_report_escapes_spec_path_and_error_strings(tmp_path):
    study = synthetic_study(tmp_path / "x", archs=("dense",), dims=(2, 16), seeds=(0,))
    trials = pd.read_parquet(study / "trials.parquet")
    trials["data_root"] = SCRIPT
    trials["dataset"] = [IMG if i % 2 else "mnist5k" for i in range(len(trials))]  # varied: a trials-table column
    trials.loc[trials["status"] == "failed", "error"] = BOLD
    trials.to_parquet(study / "trials.parquet", index=False)
    (study / "study.yaml").write_text(yaml.safe_dump({"name": "x", "data_root": SCRIPT, "dataset": IMG}))
    page = build_report(study).read_text()
    parser = _Tags()
    parser.feed(page)
    assert not [t for t, _ in parser.tags if t in ("script", "b")]
    assert not [a for _, a in parser.tags if "onerror" in a]
    assert {a["src"] for t, a in parser.tags if t == "img"} <= {p.name for p in study.glob("report/*.png")}
    assert html.escape(IMG) in page and html.escape(BOLD) in page


# --- nothing from a file runs as code -------------------------------------------------------------


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a crafted pickle does when loaded without weights_only
        return (Path.touch, (Path(self.marker),))


def test_a_crafted_checkpoint_is_refused_not_run(tmp_path, capsys):
    marker = tmp_path / "ran"
    folder = tmp_path / "checkpoint_000001"
    folder.mkdir()
    torch.save({"config": {}, "model": _RunsCode(marker)}, folder / CHECKPOINT_FILE)
    run = TrialRun({"epochs": 2, "max_train": 128, "max_eval": 64, "hidden": [16], "latent_dim": 2, "fid": False})
    with pytest.raises(CheckpointError, match="is not a vaesweep trial checkpoint"):
        load_run(run, folder)
    assert main(["fid", str(folder / CHECKPOINT_FILE)]) == 2  # the fid command: one line, exit 2
    assert one_error_line(capsys).endswith(f"or a checkpoint_*/{CHECKPOINT_FILE} of a study")
    assert not marker.exists()


def test_a_real_checkpoint_loads_with_weights_only(tmp_path):
    cfg = {"epochs": 2, "max_train": 128, "max_eval": 64, "hidden": [16], "latent_dim": 2, "fid": False}
    run = TrialRun(cfg)
    next(run.epochs())
    save_run(run, tmp_path)
    again = TrialRun(cfg)
    load_run(again, tmp_path)  # weights_only=True: the state is tensors and plain types only
    assert again.epoch == 1 and torch.equal(again.gen.get_state(), run.gen.get_state())
    for k, v in run.model.state_dict().items():
        assert torch.equal(again.model.state_dict()[k], v)


# --- self-healing tables --------------------------------------------------------------------------


def test_temporary_files_a_killed_driver_left_are_removed_when_the_study_resumes(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=0)
    t = trial("t_00000")
    run_trial(rec, t, range(1, 3))
    strays = [tmp_path / "trace.parts" / "000007.parquet.tmp", tmp_path / "epochs.parquet.tmp"]
    for stray in strays:
        stray.write_bytes(b"half a parquet file")
    before = load_study(tmp_path)
    resumed = pickle.loads(pickle.dumps(rec))  # Tuner.restore: the Recorder compacts the parts
    assert not any(stray.exists() for stray in strays)
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())
    resumed.on_experiment_end([t])  # and again at the end of the study
    pd.testing.assert_frame_equal(load_study(tmp_path).epochs, before.epochs)


def test_a_reader_racing_the_compaction_reads_the_merged_table(tmp_path, monkeypatch):
    rec = Recorder(tmp_path, flush_every_s=0)
    run_trial(rec, trial("t_00000"), range(1, 4))
    expected = load_study(tmp_path)
    real, raced = pd.read_parquet, []

    def read_parquet(path, *args, **kwargs):  # the driver compacts between the reader's listing and reading
        if not raced and ".parts" in str(path):
            raced.append(path)
            monkeypatch.setattr(pd, "read_parquet", real)
            compact(tmp_path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pd, "read_parquet", read_parquet)
    got = load_study(tmp_path)
    assert raced and not (tmp_path / "epochs.parts").exists()
    for name in ("epochs", "latents", "trace"):
        pd.testing.assert_frame_equal(getattr(got, name), getattr(expected, name))


def test_a_study_whose_tune_folder_is_gone_is_refused_not_trained_twice(tmp_path, capsys):
    path = write_study(tmp_path, "lost", **SMALL)
    study = tmp_path / "runs" / "lost"
    rec = Recorder(study, flush_every_s=0)
    run_trial(rec, trial("t_00000"), (1,))
    (study / "study.yaml").write_text(yaml.safe_dump(load_spec(path).model_dump(mode="json")))
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert one_error_line(capsys) == (
        f"vaesweep: error: {study / 'tune'} is missing: the Ray experiment of the 1 trials recorded in {study} is "
        "gone, so they cannot resume; put that folder back, or move the study folder aside to start afresh"
    )


def test_a_trial_ended_by_ctrl_c_before_its_first_epoch_is_not_done(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=0)
    started, waiting = trial("t_00000"), trial("t_00001", status="PENDING")
    rec.flush([started, waiting])
    started.status = waiting.status = "TERMINATED"  # Ray's cleanup after Ctrl+C, no epoch reported
    rec.on_experiment_end([started, waiting])
    assert set(load_study(tmp_path).trials["status"]) == {"interrupted"}


def test_a_retried_trial_that_finishes_keeps_no_old_error(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=0)
    t = trial("t_00000", status="ERROR")
    rec.flush([t])  # Ray marks it ERROR, then retries it (FailureConfig)
    assert load_study(tmp_path).trials["status"].tolist() == ["failed"]
    t.status = "RUNNING"
    run_trial(rec, t, (1, 2))
    t.status = "TERMINATED"
    rec.on_trial_complete(0, [t], t)
    row = load_study(tmp_path).trials.iloc[0]
    assert row["status"] == "done" and row["error"] is None


# --- every field validated before Ray starts ------------------------------------------------------

OPTUNA = {"space": {"latent_dim": {"grid": [4]}, "lam": {"loguniform": [0.1, 4.0]}}, "search": {"type": "optuna"}}
UNCAUGHT_SPECS = [
    ({**OPTUNA, "search": {"type": "optuna", "start": [{"lam": "abc"}]}}, "search.start.0.lam: 'abc' is not a number"),
    ({**OPTUNA, "search": {"type": "optuna", "start": [{"lam": 9.0}]}}, "search.start.0.lam: 9.0 is outside its range"),
    ({"space": {"lam": {"loguniform": [0.1, float("inf")]}}}, "space.lam.loguniform.1: Input should be a finite"),
    ({"base": {"batch_size": 1e21}}, "base: batch_size: 1e+21 is larger than any size or count a trial takes"),
    ({"base": {"batch_size": 10**21}}, "base: batch_size: 1e+21 is larger than any size or count a trial takes"),
    ({"base": {"max_train": 256.5}}, "base: max_train: 256.5 is not a whole number"),
    ({"base": {"epochs": True}}, "base: epochs: True is not a number"),
    ({"base": {"lam": float("inf")}}, "base: lam: inf is not a finite number"),
    ({"space": {"lr": {"grid": [1e-3, float("inf")]}}}, "space.lr: lr: inf is not a finite number"),
    ({"seeds": [1, 1]}, "seed 1 is listed twice"),
    ({"seeds": True}, "seeds"),
    ({"retries": True}, "retries"),
    (
        {"space": {"latent_dim": {"grid": list(range(1, 1001))}, "lam": {"grid": [0.5 + i for i in range(1000)]}}},
        "max_trials: the study has 1,000,000 trials (grid 1000 x 1000 x 1 seeds x num_samples 1), over the limit "
        "of 100,000; shrink the grid, or raise the limit with max_trials: 1000000",
    ),
]


@pytest.mark.parametrize("change,needle", UNCAUGHT_SPECS)
def test_fields_that_escaped_validation_are_refused_before_anything_starts(tmp_path, capsys, change, needle):
    path = write_study(tmp_path, "bad", **change)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


ALIAS_BOMB = "name: bomb\nbase: {epochs: 1}\na: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{b}: &{b} [*{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}, *{a}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)
BAD_FILES = [
    (
        "dup.yaml",
        "name: dup\nbase: {epochs: 1}\nbase: {epochs: 2}\n",
        "line 3 is not valid YAML (key 'base' is given twice",
    ),
    ("bomb.yaml", ALIAS_BOMB, "expands to more than 100,000 values through its aliases"),
    ("latin1.yaml", "name: caf\xe9\n".encode("latin-1"), "not UTF-8 text (byte 9); save the study YAML as UTF-8"),
    ("folder.yaml", None, "is a folder; give the path of a study YAML file"),
]


@pytest.mark.parametrize("name,content,needle", BAD_FILES)
def test_spec_files_that_are_not_plain_yaml_are_refused_in_one_line(tmp_path, capsys, name, content, needle):
    path = tmp_path / name
    if content is None:
        path.mkdir()
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert needle in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


# --- one line, exit 2, for data a user gives ------------------------------------------------------


def _images(n=300, dtype=np.uint8):
    return np.random.default_rng(0).integers(0, 255, (n, 28, 28)).astype(dtype)


def _bad_npz(folder: Path, kind: str) -> Path:
    path = folder / f"{kind}.npz"
    if kind == "garbage":
        path.write_bytes(b"these are not the pixels you are looking for" * 10)
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        np.savez(path, x=_images())
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "npy":
        np.save(folder / "x.npy", _images())
        (folder / "x.npy").rename(path)
    elif kind == "string_labels":
        np.savez(path, x=_images(), y=np.array(["cat"] * 300))
    elif kind == "uint16":
        np.savez(path, x=_images(dtype=np.uint16))
    return path


BAD_NPZ = {
    "garbage": "is not a readable .npz (",
    "empty": "is not a readable .npz (",
    "truncated": "is not a readable .npz (",
    "npy": "is a single .npy array, not an .npz",
    "string_labels": "dataset npz labels are <U3 of shape (300,); save one whole-number class label per image",
    "uint16": "dataset npz array 'x' is uint16; save uint8 pixels (0..255) or float pixels in [0, 1]",
}


@pytest.mark.parametrize("kind", BAD_NPZ)
def test_a_bad_npz_is_one_line_exit_2_before_ray_starts(tmp_path, capsys, kind):
    data = _bad_npz(tmp_path, kind)
    path = write_study(tmp_path, "npz", dataset=f"npz:{data}")
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert BAD_NPZ[kind] in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()
    assert main(["fid", str(data), "--n", "10"]) == 2  # the fid command reads it the same way
    assert BAD_NPZ[kind] in one_error_line(capsys)


def test_a_trial_whose_data_cannot_load_fails_once_not_retried(tmp_path, monkeypatch):
    reports = []
    monkeypatch.setattr(trainables.tune, "report", lambda metrics, **kw: reports.append(metrics))
    data = _bad_npz(tmp_path, "garbage")
    trainables.trainable({"dataset": f"npz:{data}", "epochs": 1})  # on a cluster node: no traceback for Ray to retry
    assert len(reports) == 1 and reports[0]["diverged"].startswith(f"DataError: dataset npz file '{data}' is not")


def test_a_study_whose_every_trial_failed_exits_1_with_the_first_error(tmp_path, capsys, monkeypatch):
    path = write_study(tmp_path, "failing", **SMALL)
    study = tmp_path / "runs" / "failing"
    rec = Recorder(study, flush_every_s=0)
    for i in range(3):
        t = trial(f"t_0000{i}", status="ERROR")
        t.config["latent_dim"] = [2, 4, 8][i]
        rec.on_trial_start(0, [t], t)
        rec.on_trial_result(0, [t], t, {"diverged": f"loss became nan at step {i}"})
    rec.on_experiment_end([])
    (study / "study.yaml").write_text(yaml.safe_dump({"name": "failing"}))
    monkeypatch.setattr(cli_study, "run_study", lambda spec, **kw: study)  # the study ran: every trial failed
    monkeypatch.setattr(cli_study, "report_lines", lambda out: [])
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "vaesweep: error: every trial of the study failed; the first, t_00000: loss became nan at step 0"
    )


def test_a_study_ray_stopped_on_ctrl_c_is_interrupted_exit_130(tmp_path, capsys, monkeypatch):
    path = write_study(tmp_path, "stopped", **SMALL)
    study = tmp_path / "runs" / "stopped"
    rec = Recorder(study, flush_every_s=0)
    done, cut = trial("t_00000"), trial("t_00001")
    run_trial(rec, done, (1, 2, 3))
    done.status = "TERMINATED"
    rec.on_trial_complete(0, [done], done)
    run_trial(rec, cut, (1,))
    cut.status = "TERMINATED"  # Ray ended it on Ctrl+C: fit() returned
    rec.on_experiment_end([done, cut])
    (study / "tune").mkdir()
    spec = load_spec(path)
    assert interrupted(spec, study)
    monkeypatch.setattr(runner, "_run_locked", lambda *args: study)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 130
    assert capsys.readouterr().err.strip() == "vaesweep: interrupted: run the same command again to resume"


def test_storage_that_is_a_file_and_a_name_too_long_are_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    path = write_study(tmp_path, "x", **SMALL)
    assert main(["run", str(path), "--storage", str(tmp_path / "afile")]) == 2
    assert f"storage '{tmp_path / 'afile'}': {tmp_path / 'afile'} is a file, not a folder" in one_error_line(capsys)
    long = write_study(tmp_path, "long", **SMALL)
    long.write_text(long.read_text().replace("name: long", f"name: {'n' * 256}"))
    assert main(["run", str(long), "--storage", str(tmp_path / "runs")]) == 2
    assert "at most 255 characters; this one has 256" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


def test_report_out_that_is_a_file_is_one_line_exit_2(tmp_path, capsys):
    study = synthetic_study(tmp_path / "x", archs=("dense",), dims=(2,), seeds=(0,))
    (tmp_path / "afile").write_text("")
    assert main(["report", str(study), "--out", str(tmp_path / "afile")]) == 2
    assert "--out " in one_error_line(capsys)


def test_a_study_folder_this_user_may_not_write_is_one_line_exit_2(tmp_path, capsys, monkeypatch):
    path = write_study(tmp_path, "x", **SMALL)
    denied = tmp_path / "runs" / "x" / "driver.lock"

    def acquire(self, *args, **kwargs):  # as for a non-root user in another user's read-only folder
        raise PermissionError(13, "Permission denied", str(denied))

    monkeypatch.setattr(lock.FileLock, "acquire", acquire)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    assert one_error_line(capsys) == (
        f"vaesweep: error: {denied}: permission denied; run as a user who may write there, "
        "or copy the study folder to one you own"
    )


def test_an_address_nothing_answers_is_refused_naming_it(tmp_path, capsys):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    path = write_study(tmp_path, "x", **SMALL)
    assert main(["run", str(path), "--storage", str(tmp_path / "runs"), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"--address 127.0.0.1:{port}: no Ray cluster answers there (" in one_error_line(capsys)
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_local_ray_session_folder_is_removed_when_the_driver_exits():
    script = (
        "import ray; from vaesweep.study.cluster import init_ray; init_ray(None); "
        "print(ray._private.worker._global_node.get_session_dir_path())"
    )
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    session = Path(res.stdout.strip().splitlines()[-1])
    assert session.name.startswith("session_") and not session.exists()


@pytest.mark.slow
def test_ctrl_c_during_a_study_exits_130_and_no_trial_without_an_epoch_is_done(tmp_path):
    path = write_study(tmp_path, "ctrlc", **{**SMALL, "base": {**SMALL["base"], "epochs": 50}})
    study = tmp_path / "runs" / "ctrlc"
    driver = subprocess.Popen(
        [sys.executable, "-m", "vaesweep", "run", str(path), "--storage", str(tmp_path / "runs"), "--quiet"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        while driver.poll() is None and not (study / "epochs.parts").exists():  # training: an epoch recorded
            time.sleep(0.2)
        driver.send_signal(signal.SIGINT)
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 130, err[-3000:]
    assert err.strip().splitlines()[-1] == "vaesweep: interrupted: run the same command again to resume"
    assert "Tuner.restore" not in err + out
    trials = load_study(study).trials
    assert "done" not in set(trials["status"]) and "interrupted" in set(trials["status"])


def test_every_pickled_object_that_writes_into_the_study_follows_the_folder(tmp_path):
    old, new = tmp_path / "old" / "s", tmp_path / "new" / "s"
    old.mkdir(parents=True)
    new.mkdir(parents=True)
    spec = spec_from_dict({"name": "s", "callbacks": ["mlflow"], **OPTUNA})
    [mlflow] = tracking_callbacks(spec, old)
    search = make_search([Objective()], Sampler(), True, old / DB_FILE, "s:x")
    objects = (Recorder(old, flush_every_s=9.0), LambdaStarWriter(spec, old), mlflow, search._storage)
    saved = cloudpickle.dumps(objects)  # as Ray writes tune/tuner.pkl
    with running_in(new):  # the driver of the moved study unpickles Ray's state
        recorder, writer, mlflow, storage = pickle.loads(saved)
    assert recorder.out == new and recorder.flush_every_s == 9.0 and writer.out == new
    assert mlflow.tracking_uri == f"sqlite:///{new / 'mlflow.db'}" and mlflow.artifacts == new / "mlruns"
    assert storage.url == f"sqlite:///{new / DB_FILE}"
    recorder, *_ = pickle.loads(saved)  # outside a driver (nothing writes): the saved folder
    assert recorder.out == old
