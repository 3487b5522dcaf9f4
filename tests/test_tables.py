"""The study tables: the metric catalogue decides the columns, flushes append parts, resumes never double rows."""

import pickle
from types import SimpleNamespace

import pandas as pd

from analysis.report import _trials_table
from vaesweep.config import metrics
from vaesweep.study.recorder import Recorder
from vaesweep.study.tables import TABLES, compact, load_study


def report(epoch, latent_dim=3, shift=0.0, **extra):
    """One epoch's report as a trial makes it (engine/trial.py), without training."""
    latents = [
        {
            "latent": i,
            "mean_mu": 0.1 * i,
            "var_mu": 1.0 / (i + 1) + shift,
            "mean_sigma2": 0.5,
            "law": 1.0,
            "kl": 0.2 * i,
            "recon_gain": 0.0,
            "active": i > 0,
        }
        for i in range(latent_dim)
    ]
    trace = [
        {"step": 10 * epoch + s, "var_mu": [0.1 * s + shift] * latent_dim, "mean_sigma2": [0.5] * latent_dim}
        for s in range(2)
    ]
    return {
        "epoch": epoch,
        "step": 10 * epoch,
        "evaluated": True,
        "train_loss": 1.0 / epoch + shift,
        "train_recon": 0.5,
        "train_kl": 0.5,
        "epoch_time": 0.1,
        "time_total": 0.1 * epoch,
        "n_active": latent_dim - 1,
        "n_inactive": 1,
        "elbo": -100.0 / epoch - shift,
        "kl_working": True,
        "settled": epoch > 2,
        "settled_step": 30 if epoch > 2 else None,
        "fid_seconds": 1.5,
        "latents": latents,
        "trace": trace,
        **extra,
    }


def trial(trial_id, latent_dim=3, status="RUNNING"):
    return SimpleNamespace(
        trial_id=trial_id, config={"latent_dim": latent_dim, "lam": 1.0}, status=status, error_file=None
    )


def run_trial(rec, t, epochs, **extra):
    rec.on_trial_start(0, [t], t)
    for e in epochs:
        rec.on_trial_result(0, [t], t, report(e, t.config["latent_dim"], **extra))


def test_a_metric_family_added_in_one_place_reaches_every_table(tmp_path, monkeypatch):
    monkeypatch.setattr(
        metrics,
        "CATALOGUE",
        (*metrics.CATALOGUE, metrics.Family("sharpness", "trial", ("sharpness",), source="a test")),
    )
    rec = Recorder(tmp_path, flush_every_s=1e9)
    t = trial("t_00000")
    for e in (1, 2):
        rec.on_trial_result(0, [t], t, report(e, sharpness=0.5 * e, stray=7.0))
    t.status = "TERMINATED"
    rec.on_trial_complete(0, [t], t)
    tables = rec.tables()
    assert list(tables.epochs["sharpness"]) == [0.5, 1.0]
    assert tables.trials["sharpness"].iloc[0] == 1.0  # the last epoch's
    columns = list(_trials_table(tables.trials, ("latent_dim",)).columns)
    assert columns.index("status") < columns.index("elbo") < columns.index("sharpness") < columns.index("epochs_done")
    assert columns[-3:] == ["epochs_done", "time_total", "error"]
    # a key in no family reaches no table; a timing is an epoch column, never part of a trial's answer
    assert all("stray" not in getattr(tables, name) for name in TABLES)
    assert "fid_seconds" in tables.epochs and "fid_seconds" not in tables.trials and "fid_seconds" not in columns


def test_a_flush_appends_the_new_rows_and_compaction_changes_no_table(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=1e9)
    first, second = trial("t_00000", 2), trial("t_00001", 4)
    run_trial(rec, first, range(1, 4))
    rec.flush([first])
    part = tmp_path / "trace.parts" / "000000.parquet"
    written = part.read_bytes()
    run_trial(rec, second, range(1, 3))
    rec.flush([first, second])
    assert part.read_bytes() == written  # the first flush's rows are not written again
    assert sorted(p.name for p in (tmp_path / "trace.parts").iterdir()) == ["000000.parquet", "000001.parquet"]
    assert all(not rows for rows in rec.new.values())  # the driver holds no flushed row
    before = load_study(tmp_path)
    assert len(before.epochs) == 5 and len(before.trace) == 3 * 2 * 2 + 2 * 2 * 4
    assert list(before.latents.groupby("trial_id")["epoch"].max()) == [3, 2]
    assert dict(zip(before.trials["trial_id"], before.trials["epochs_done"])) == {"t_00000": 3, "t_00001": 2}
    rec.on_experiment_end([first, second])
    assert not any(p.name.endswith(".parts") for p in tmp_path.iterdir())
    after = load_study(tmp_path)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(after, name), getattr(before, name))


def test_a_resumed_trial_reports_again_without_doubled_rows(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=0)  # flush at every result, like a driver killed mid-trial
    t = trial("t_00000")
    run_trial(rec, t, range(1, 5))
    resumed = pickle.loads(pickle.dumps(rec))  # Tuner.restore unpickles the callback: it compacts and goes on
    assert not (tmp_path / "epochs.parts").exists()
    assert resumed.trials["t_00000"]["status"] == "running" and resumed.final["t_00000"]["epochs_done"] == 4
    for e in range(3, 6):  # the last checkpoint was epoch 2
        resumed.on_trial_result(0, [t], t, report(e, shift=1.0))
    t.status = "TERMINATED"
    resumed.on_trial_complete(0, [t], t)
    s = load_study(tmp_path)
    assert list(s.epochs["epoch"]) == [1, 2, 3, 4, 5]
    assert list(s.epochs["train_loss"]) == [1.0, 0.5, 1 / 3 + 1, 1 / 4 + 1, 1 / 5 + 1]  # the re-reported epochs
    for table in (s.latent_history, s.trace):
        assert not table.duplicated([c for c in ("trial_id", "epoch", "step", "latent") if c in table]).any()
        assert sorted(table["epoch"].unique()) == [1, 2, 3, 4, 5]
    assert list(s.latents["epoch"]) == [5, 5, 5] and list(s.latents["latent"]) == [0, 1, 2]
    row = s.trials.iloc[0]
    assert (row["status"], row["epochs_done"], row["elbo"], row["time_total"]) == ("done", 5, -21.0, 0.5)
    resumed.on_experiment_end([t])  # the parts merged into the compacted tables: the same rows
    assert not (tmp_path / "trace.parts").exists()
    compacted = load_study(tmp_path)
    for name in TABLES:
        pd.testing.assert_frame_equal(getattr(compacted, name), getattr(s, name))


def test_a_damaged_part_is_left_out_with_a_warning_then_moved_aside_not_a_reason_to_delete_the_study(tmp_path, capsys):
    rec = Recorder(tmp_path, flush_every_s=1e9)
    run_trial(rec, trial("t_00000"), (1,))
    rec.flush()
    run_trial(rec, trial("t_00001"), (1, 2))
    rec.flush()
    good = load_study(tmp_path)
    capsys.readouterr()
    bad = tmp_path / "trace.parts" / "000001.parquet"
    bad.write_bytes(b"not parquet at all")
    s = load_study(tmp_path)  # a reader: the part's rows left out, one line says so
    err = capsys.readouterr().err.strip()
    assert (
        err == f"vaesweep: warning: {bad} is damaged (Parquet magic bytes not found in footer); its rows are left out"
    )
    assert set(s.trace["trial_id"]) == {"t_00000"} and len(s.epochs) == len(good.epochs)
    compact(tmp_path)  # the driver (when the study runs): moved aside, the rest merged
    aside = tmp_path / "damaged" / "trace-000001.parquet"
    assert aside.read_bytes() == b"not parquet at all" and not (tmp_path / "trace.parts").exists()
    assert capsys.readouterr().err.startswith(f"vaesweep: warning: {bad} was damaged (")
    after = load_study(tmp_path)
    pd.testing.assert_frame_equal(after.epochs, good.epochs)
    assert capsys.readouterr().err == ""


def test_a_resumed_study_forgets_the_unfinished_trials_ray_lost_with_the_killed_driver(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=0)
    kept, lost, finished = trial("t_00000"), trial("t_00001"), trial("t_00002")
    run_trial(rec, kept, range(1, 3))  # running: in Ray's snapshot, resumed from its checkpoint
    run_trial(rec, lost, range(1, 3))  # running: started after Ray's last snapshot, gone with the driver
    run_trial(rec, finished, range(1, 3))
    finished.status = "TERMINATED"
    rec.on_trial_complete(0, [kept, lost, finished], finished)
    resumed = pickle.loads(pickle.dumps(rec))
    resumed.on_step_begin(0, [kept])  # Ray's restored experiment holds t_00000; a finished trial is kept regardless
    resumed.on_step_begin(1, [])  # only the first step reconciles
    s = load_study(tmp_path)
    assert sorted(s.trials["trial_id"]) == ["t_00000", "t_00002"]
    for name in ("epochs", "latents", "latent_history", "trace"):
        assert set(getattr(s, name)["trial_id"]) == {"t_00000", "t_00002"}, name


def test_trials_stopped_by_ctrl_c_read_interrupted_not_done(tmp_path):
    rec = Recorder(tmp_path, flush_every_s=0)
    finished, stopped, waiting = trial("t_00000"), trial("t_00001"), trial("t_00002", status="PENDING")
    run_trial(rec, finished, range(1, 3))
    run_trial(rec, stopped, range(1, 2))
    finished.status = "TERMINATED"
    rec.on_trial_complete(0, [finished, stopped, waiting], finished)
    stopped.status = "TERMINATED"  # Ray's cleanup after Ctrl+C: ended without on_trial_complete
    rec.on_experiment_end([finished, stopped, waiting])
    s = load_study(tmp_path).trials.set_index("trial_id")["status"]
    assert s.to_dict() == {"t_00000": "done", "t_00001": "interrupted", "t_00002": "pending"}
    resumed = pickle.loads(pickle.dumps(rec))  # run again: Ray restarts it from its checkpoint
    stopped.status = "RUNNING"
    resumed.on_trial_start(0, [finished, stopped, waiting], stopped)
    assert resumed.trials["t_00001"]["status"] == "running"
