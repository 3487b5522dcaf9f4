"""Studies on Ray Tune through the CLI: results, resume, failures, and malformed specs."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ROOT, vaesweep_cli

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
    assert "done" in res.stdout and "best elbo" in res.stdout  # progress lines
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
    progress, title, header, *rows = capsys.readouterr().out.splitlines()
    best = load_study(study).trials.sort_values("elbo", ascending=False)
    assert progress.startswith(
        f"[smoke] 4/4 done, 0 running, 0 failed; best elbo {best['elbo'].iloc[0]:.4g} "
        f"({best['trial_id'].iloc[0]}: arch=dense latent_dim="
    )
    assert title == "best trials by elbo (max):"
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


@pytest.mark.slow
def test_killed_driver_resumes_without_repeating_finished_trials(tmp_path):
    path = write_study(
        tmp_path,
        "killed",
        base={"epochs": 4, "max_train": 1000, "max_eval": 200, "hidden": [64, 32]},
        space={"latent_dim": {"grid": [2, 4, 8]}, "lam": {"grid": [0.5, 2.0]}},
    )
    study = tmp_path / "runs" / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen(
        [sys.executable, "-m", "vaesweep", "run", str(path), "--storage", str(tmp_path / "runs")],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(0.5)
            try:
                done = (load_study(study).trials["status"] == "done").sum()
            except Exception:  # not written yet, or being replaced
                continue
            if done >= 2:
                break
        assert done < 6, "the study finished before it could be interrupted"
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and the local Ray it started
        driver.wait()
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
    finished_before = {
        tid for tid, s in load_study(study).trials.set_index("trial_id")["status"].items() if s == "done"
    }
    lines_before = result_lines(study)
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    t = load_study(study)
    assert len(t.trials) == 6 and (t.trials["status"] == "done").all()
    assert len(t.epochs) == 6 * 4 and not t.epochs.duplicated(["trial_id", "epoch"]).any()
    after = result_lines(study)
    for trial_dir, before in lines_before.items():
        if any(tid in trial_dir for tid in finished_before):
            # no epoch trained again: a trial whose final snapshot Ray had not saved yet may be
            # restored from its final checkpoint and re-report that last epoch, nothing more
            assert set(after[trial_dir]) == set(before), f"finished trial {trial_dir} was run again"


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
