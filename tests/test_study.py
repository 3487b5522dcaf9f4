"""Studies on Ray Tune through the CLI: results, resume, failures, and malformed specs."""

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, epoch_rows, killed_driver, vaesweep_cli

from vaesweep.cli.main import main
from vaesweep.study.tables import load_study

SMOKE = ROOT / "studies" / "smoke.yaml"


def write_study(tmp_path, name, **changes):
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(name=name, **changes)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def result_lines(study: Path) -> dict[str, list[tuple]]:
    """Per Ray trial dir: (epoch, time_total) of every result Ray's JSON logger wrote."""
    out = {}
    for p in (study / "tune").glob("*/result.json"):
        rows = [json.loads(line) for line in p.read_text().splitlines()]
        out[p.parent.name] = [(r.get("epoch"), r.get("time_total")) for r in rows]
    return out


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    storage = tmp_path_factory.mktemp("runs")
    t0 = time.perf_counter()
    res = vaesweep_cli("run", SMOKE, "--storage", storage)
    assert res.returncode == 0, res.stderr[-3000:]
    return storage / "smoke", res, time.perf_counter() - t0


@pytest.mark.slow
def test_smoke_study_end_to_end(smoke):
    study, res, wall = smoke
    spec = yaml.safe_load(SMOKE.read_text())
    t = load_study(study)
    n_trials = len(spec["space"]["latent_dim"]["grid"]) * len(spec["space"]["lam"]["grid"])
    epochs = spec["base"]["epochs"]
    assert len(t.trials) == n_trials and (t.trials["status"] == "done").all()
    assert len(t.epochs) == n_trials * epochs
    assert (
        t.epochs.groupby("trial_id")["epoch"].apply(sorted).map(list).eq([list(range(1, epochs + 1))] * n_trials).all()
    )
    # one row per trial per latent variable
    assert len(t.latents) == sum(t.trials["latent_dim"])
    assert set(t.trials.columns) >= {
        "latent_dim",
        "lam",
        "arch",
        "seed",
        "n_active",
        "law_residual_max",
        "kl_working",
        "elbo",
        "status",
        "error",
        "settled",
        "settled_step",
    }
    assert {"settled", "settled_step"} <= set(t.epochs.columns)
    merged = t.latents.groupby("trial_id")["active"].sum().rename("n").to_frame().join(t.trials.set_index("trial_id"))
    assert (merged["n"] == merged["n_active"]).all()
    assert (study / "study.yaml").exists() and "torch" in json.loads((study / "versions.json").read_text())
    assert "started" in res.stdout and "stopped (budget)" in res.stdout  # progress lines, one per change
    assert list((study / "tune").rglob("result.json")) and not list((study / "tune").rglob("progress.csv"))
    index = study / "report" / "index.html"  # the report is written at the end of the run
    assert f"report: {index}" in res.stdout.splitlines() and "smoke" in index.read_text()
    print(f"smoke study wall {wall:.1f}s, trials' own time {t.trials['time_total'].sum():.1f}s")


@pytest.mark.slow
def test_second_run_reruns_nothing(smoke):
    study, _, _ = smoke
    before_lines, before = result_lines(study), load_study(study).epochs
    res = vaesweep_cli("run", SMOKE, "--storage", study.parent)
    assert res.returncode == 0, res.stderr[-3000:]
    assert result_lines(study) == before_lines
    pd.testing.assert_frame_equal(load_study(study).epochs, before)


@pytest.mark.slow
def test_status_command(smoke, capsys):
    study, _, _ = smoke
    assert main(["status", str(study)]) == 0
    printed = capsys.readouterr().out.splitlines()
    best = load_study(study).trials.sort_values("elbo", ascending=False)
    assert printed[0] == "[smoke] 4/4 done, 0 running, 0 failed, 0 settled"  # 3 epochs: too short to settle
    assert "  0 of 4 finished trials settled" in printed
    assert printed[-1] == f"report: {study / 'report' / 'index.html'}"
    title = printed.index("best trials by elbo (max):")
    header, *rows = printed[title + 1 : -1]
    assert header.split() == [
        "trial_id",
        "arch",
        "latent_dim",
        "lam",
        "seed",
        "n_active",
        "law_residual_max",
        "mean_mu_abs_max",
        "kl_working",
        "settled",
        "elbo",
    ]
    assert [row.split()[0] for row in rows] == list(best["trial_id"])  # every trial, best first


# The driver dies at the worst moment Ray leaves it: a trial's final checkpoint has just replaced its
# previous one (CheckpointConfig(num_to_keep=1)), and the experiment snapshot that would name it is written
# only at the end of the controller's step (vaesweep/study/recovery.py). Patched on the Recorder's class, so
# the pickled Tuner keeps the real Recorder for the resumed run.
KILL_AT_FIRST_COMPLETION = """
import os, signal, sys
from vaesweep.config.spec import load_spec
from vaesweep.study import runner
from vaesweep.study.recorder import Recorder
real = Recorder.on_trial_complete
def on_trial_complete(self, iteration, trials, trial, **info):
    real(self, iteration, trials, trial, **info)
    os.killpg(0, signal.SIGKILL)  # the driver and the local Ray it started
Recorder.on_trial_complete = on_trial_complete
runner.run_study(load_spec(sys.argv[1]), storage=sys.argv[2], quiet=True)
"""


@pytest.mark.slow
def test_killed_driver_resumes_without_repeating_finished_trials(tmp_path):
    path = write_study(
        tmp_path,
        "killed",
        base={"epochs": 4, "max_train": 1000, "max_eval": 200, "hidden": [64, 32], "fid": False},
        space={"latent_dim": {"grid": [2, 4, 8]}, "lam": {"grid": [0.5, 2.0]}},
    )
    study = tmp_path / "runs" / "killed"
    killed_driver(KILL_AT_FIRST_COMPLETION, path, tmp_path / "runs")
    raced = [d for d in (study / "tune").glob("*/checkpoint_000003") if not (d.parent / "checkpoint_000002").exists()]
    assert raced  # the state the kill left: the final checkpoint replaced the one Ray's snapshot names
    before = load_study(study)
    finished = set(before.trials.loc[before.trials["status"] == "done", "trial_id"])
    lines_before = result_lines(study)
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumes from checkpoint_000003: the snapshot named checkpoint_000002" in res.stderr
    after = load_study(study)
    assert len(after.trials) == 6 and (after.trials["status"] == "done").all()
    assert len(after.epochs) == 6 * 4 and not after.epochs.duplicated(["trial_id", "epoch"]).any()
    assert finished and len(finished) < 6  # killed mid-study
    kept = epoch_rows(before, finished)
    pd.testing.assert_frame_equal(kept, epoch_rows(after, finished))  # the finished trials' numbers kept
    final = {(4, t) for t in kept.query("epoch == 4")["time_total"]}
    lines_after = result_lines(study)
    for trial_dir, lines in lines_before.items():
        if any(tid in trial_dir for tid in finished):
            # no epoch trained again: restored from its final checkpoint, the trial reports that epoch once more
            assert set(lines_after[trial_dir]) - set(lines) <= final, f"finished trial {trial_dir} was run again"


@pytest.mark.slow
def test_diverging_trial_is_recorded_as_failed_and_the_study_goes_on(tmp_path):
    path = write_study(tmp_path, "nan", space={"lr": {"grid": [1e-3, 1e3]}}, retries=1)
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    t = load_study(tmp_path / "runs" / "nan").trials.set_index("lr")
    assert t.loc[1e-3, "status"] == "done", t.loc[1e-3, "error"]
    assert t.loc[1e3, "status"] == "failed" and "nan" in t.loc[1e3, "error"]


@pytest.mark.slow
def test_more_gpus_than_the_cluster_has(tmp_path):
    path = write_study(tmp_path, "gpus", resources={"cpu": 1, "gpu": 1})
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 2
    assert "resources.gpu" in res.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "runs").exists()


BAD_SPECS = [
    ({"surprise": 1}, "surprise: unknown key"),
    ({"seeds": "three"}, "seeds"),
    ({"space": {"lam": {"grid": []}}}, "space.lam"),
    ({"dataset": "svhn"}, "svhn"),
    ({"space": {"lam": {"grid": [1.0, -0.5]}}}, "space.lam: lam"),
    ({"base": {"lam": -1}}, "base: lam"),
    ({"space": {"latnet_dim": {"grid": [2]}}}, "space.latnet_dim: unknown trial field"),
    ({"space": {"lam": {"between": [0, 1]}}}, "space.lam: give one of"),
    ({"space": {"lam": {"loguniform": [0, 1]}}}, "loguniform bounds must be > 0"),
    ({"space": {"lam": {"uniform": [2, 1]}}}, "space.lam"),
    ({"resources": {"cpu": 0}}, "resources.cpu"),
    ({"search": {"type": "bayes"}}, "search.type"),
    ({"name": "has space"}, "name"),
    ({"base": {"epochs": "ten"}}, "base: epochs"),
    ({"scheduler": {"type": "asha", "mode": "up"}}, "scheduler.mode"),
]


@pytest.mark.parametrize("change,needle", BAD_SPECS)
def test_malformed_specs_one_line_exit_2_nothing_written(tmp_path, capsys, change, needle):
    spec = yaml.safe_load(SMOKE.read_text())
    spec.update(change)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["run", str(path), "--storage", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vaesweep: error:"), err
    assert needle in err, err
    assert not (tmp_path / "runs").exists()


def test_not_yaml_and_missing_file(tmp_path, capsys):
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n")
    assert main(["run", str(tmp_path / "broken.yaml")]) == 2
    assert "not valid YAML" in capsys.readouterr().err
    assert main(["run", str(tmp_path / "absent.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
