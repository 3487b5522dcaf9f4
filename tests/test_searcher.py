"""The Optuna searcher: minimal lambda with a working KL term (Sec. 6.1), through Ray Tune."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import epoch_rows, killed_driver, vaesweep_cli

from vaesweep.config.spec import SpecError, spec_from_dict
from vaesweep.study.searcher import lambda_star
from vaesweep.study.tables import load_study

TINY_SEARCH = {
    "name": "lam_tiny",
    # loose tolerances so a 2-epoch model can pass the laws at large lambda
    "base": {
        "latent_dim": 4,
        "epochs": 2,
        "max_train": 500,
        "max_eval": 200,
        "hidden": [32],
        "law_tol": 0.5,
        "mu_tol": 0.5,
        # lambda* counts settled trials only: a 2-epoch window, every variable counted active (a tiny
        # model's var_mu stays above 1e-3), so each trial settles at its second epoch
        "settle_patience": 2,
        "settle_min_steps": 0,
        "settle_law_tol": 100.0,
        "active_threshold": 1e-6,
    },
    "space": {"lam": {"loguniform": [0.1, 10.0]}},
    "search": {
        "type": "optuna",
        "num_samples": 4,
        "sampler": {"type": "gp", "n_startup_trials": 1},
        "start": [{"lam": 10.0}],
    },
    "resources": {"cpu": 1},
    "max_concurrent": 2,
}


@pytest.mark.slow
def test_search_runs_through_ray_writes_sqlite_resumes_and_finds_lambda_star(tmp_path):
    path = tmp_path / "lam_tiny.yaml"
    path.write_text(yaml.safe_dump(TINY_SEARCH))
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    study = tmp_path / "runs" / "lam_tiny"
    db = f"sqlite:///{study / 'optuna.db'}"
    (name,) = optuna.get_all_study_names(db)
    ot = optuna.load_study(study_name=name, storage=db)
    complete = [t for t in ot.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == 4
    assert all(set(t.constraints) == {"law_excess", "mu_excess"} for t in complete)  # Optuna's own constraints
    assert complete[0].params["lam"] == 10.0  # the start point

    star = pd.read_parquet(study / "lambda_star.parquet")
    assert len(star) == 1 and star["n_trials"].iloc[0] == 4
    trials = load_study(study).trials.set_index("trial_id")
    best = trials.loc[star["lam_star_trial"].iloc[0]]
    assert best["kl_working"] and best["law_residual_max"] <= 0.5 and best["mean_mu_abs_max"] <= 0.5
    counted = trials[trials["kl_working"] & trials["settled"].eq(True)]  # unsettled trials cannot be lambda*
    assert best["settled"] and best["lam"] == star["lam_star"].iloc[0] == counted["lam"].min()
    assert star["n_unsettled"].iloc[0] == (~trials["settled"].eq(True)).sum()
    feasible = [t for t in complete if max(t.constraints.values()) <= 0]
    assert min(t.params["lam"] for t in feasible) <= star["lam_star"].iloc[0] * (1 + 1e-9)

    # running it again resumes the same Optuna study: nothing new is tried
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(optuna.load_study(study_name=name, storage=db).trials) == len(ot.trials)
    assert "minimal lambda" in res.stdout


# two settings (latent_dim 2 and 4) x two trials, each setting's search sequential (the default
# max_concurrent_per_setting: 1), no global limit: a 2-CPU Ray runs one trial of each setting side by side
TWO_SETTINGS = {
    **TINY_SEARCH,
    "name": "lam_two",
    "max_concurrent": None,
    "base": {**{k: v for k, v in TINY_SEARCH["base"].items() if k != "latent_dim"}, "max_train": 256, "max_eval": 128},
    "space": {**TINY_SEARCH["space"], "latent_dim": {"grid": [2, 4]}},
    "search": {**TINY_SEARCH["search"], "num_samples": 2},
}


def ray_trial_spans(study) -> list[tuple[int, float, int]]:
    """(latent_dim, start, end) of every Ray trial of the search, from Ray's experiment state: when it began
    running, and the timestamp of its last report (whole seconds, rounded down: never later than the end)."""
    state = json.loads(max((study / "tune" / "search").glob("experiment_state-*.json")).read_text())
    return [
        (
            json.loads(trial)["config"]["latent_dim"],
            json.loads(meta)["start_time"],
            json.loads(meta)["last_result"]["timestamp"],
        )
        for trial, meta in state["trial_data"]
    ]


def reported_epochs(study) -> dict[str, set[tuple]]:
    """Per Ray trial folder of the search: (epoch, time_total) of every result Ray's JSON logger wrote."""
    return {
        p.parent.name: {(r.get("epoch"), r.get("time_total")) for r in map(json.loads, p.read_text().splitlines())}
        for p in (study / "tune" / "search").glob("*/result.json")
    }


def optuna_trials(study, everything: bool = False) -> dict[str, list]:
    """Every setting's Optuna study: its finished trials (everything: all its trials, in any state)."""
    db = f"sqlite:///{study / 'optuna.db'}"
    return {
        name: [
            t
            for t in optuna.load_study(study_name=name, storage=db).trials
            if everything or t.state == optuna.trial.TrialState.COMPLETE
        ]
        for name in optuna.get_all_study_names(db)
    }


@pytest.mark.slow
def test_settings_search_side_by_side_each_in_its_own_order(tmp_path):
    path = tmp_path / "lam_two.yaml"
    path.write_text(yaml.safe_dump(TWO_SETTINGS))
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    study = tmp_path / "runs" / "lam_two"
    studies = optuna_trials(study)
    assert sorted(studies) == ["lam_two:latent_dim=2,seed=0", "lam_two:latent_dim=4,seed=0"]
    assert all(len(c) == 2 and c[0].params["lam"] == 10.0 for c in studies.values())  # each its own start point

    spans = ray_trial_spans(study)
    assert sorted(d for d, _, _ in spans) == [2, 2, 4, 4]
    for dim in (2, 4):  # one setting: the second trial starts after the first has reported its last epoch
        first, second = sorted((s, e) for d, s, e in spans if d == dim)
        assert first[1] < second[0], spans
    together = [(a, b) for a in spans for b in spans if a[0] < b[0] and a[1] < b[2] and b[1] < a[2]]
    assert together, f"no trials of the two settings ran at the same time: {spans}"

    star = pd.read_parquet(study / "lambda_star.parquet").sort_values("latent_dim")
    assert star["latent_dim"].tolist() == [2, 4] and star["n_trials"].tolist() == [2, 2]
    trials = load_study(study).trials
    assert len(trials) == 4 and (trials["status"] == "done").all()


# The driver dies right after the searcher asked Optuna for a trial (kept in optuna.db at once) and before
# Ray made it a trial of its experiment: the restored searcher must not wait on that Optuna trial, nor run
# a start point twice, and the budget holds. Patched on the class, so the pickled Tuner keeps the real one.
KILL_AT_THIRD_SUGGESTION = """
import os, signal, sys
from vaesweep.config.spec import load_spec
from vaesweep.study import runner
from vaesweep.study.searcher import SettingsSearch
real, given = SettingsSearch.suggest, []
def suggest(self, trial_id):
    config = real(self, trial_id)
    if isinstance(config, dict):
        given.append(trial_id)
        if len(given) == 3:
            os.killpg(0, signal.SIGKILL)  # the driver and the local Ray it started
    return config
SettingsSearch.suggest = suggest
runner.run_study(load_spec(sys.argv[1]), storage=sys.argv[2], quiet=True)
"""


@pytest.mark.slow
def test_killed_settings_search_resumes_without_repeating_finished_trials(tmp_path):
    spec = {**TWO_SETTINGS, "name": "lam_killed", "base": {**TWO_SETTINGS["base"], "epochs": 4, "fid": False}}
    path = tmp_path / "lam_killed.yaml"
    path.write_text(yaml.safe_dump(spec))
    study = tmp_path / "runs" / "lam_killed"
    killed_driver(KILL_AT_THIRD_SUGGESTION, path, tmp_path / "runs")
    asked = {name: len(trials) for name, trials in optuna_trials(study, everything=True).items()}
    assert sum(asked.values()) == 3  # the third asked of Optuna, never run
    before = load_study(study)
    finished = set(before.trials.loc[before.trials["status"] == "done", "trial_id"])
    lines = {name: epochs for name, epochs in reported_epochs(study).items() if any(t in name for t in finished)}
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    t = load_study(study)
    assert len(t.trials) == 4 and (t.trials["status"] == "done").all()
    assert len(t.epochs) == 4 * 4 and not t.epochs.duplicated(["trial_id", "epoch"]).any()
    assert {name: len(c) for name, c in optuna_trials(study).items()} == {
        "lam_killed:latent_dim=2,seed=0": 2,
        "lam_killed:latent_dim=4,seed=0": 2,
    }  # the budget kept across the kill
    for name, trials in optuna_trials(study, everything=True).items():
        assert sum("fixed_params" in t.system_attrs for t in trials) == 1, f"{name}: its start point enqueued again"
        assert not [t for t in trials if t.state.name in ("RUNNING", "WAITING")], f"{name}: a trial left open"
    kept = epoch_rows(before, finished)
    pd.testing.assert_frame_equal(kept, epoch_rows(t, finished))  # the finished trials' numbers kept
    final = {(4, s) for s in kept.query("epoch == 4")["time_total"]}
    after = reported_epochs(study)
    for trial_dir, epochs in lines.items():
        # no epoch trained again: a trial whose final snapshot Ray had not saved yet may be restored from its
        # final checkpoint and report that epoch once more (Ray's result.json on storage may lag it)
        assert after[trial_dir] - epochs <= final, f"finished trial {trial_dir} was run again"
    star = pd.read_parquet(study / "lambda_star.parquet")
    assert sorted(star["n_trials"]) == [2, 2]


def test_lambda_star_brackets_on_a_known_table():
    trials = pd.DataFrame(
        {
            "trial_id": list("abcdef"),
            "arch": ["dense"] * 3 + ["conv"] * 3,
            "status": "done",
            "lam": [0.5, 1.0, 2.0, 0.3, 0.6, 1.2],
            "kl_working": [False, True, True, False, False, True],
            "law_residual_max": [0.4, 0.1, 0.05, 0.5, 0.2, 0.1],
        }
    )
    star = lambda_star(trials, ["arch"]).set_index("arch")
    assert star.loc["dense", "lam_star"] == 1.0 and star.loc["dense", "lam_below"] == 0.5
    assert star.loc["conv", "lam_star"] == 1.2 and star.loc["conv", "lam_below_law_residual"] == 0.2
    assert star["n_unsettled"].isna().all()  # a study from before the settled column: unknown


def test_lambda_star_counts_settled_trials_only():
    trials = pd.DataFrame(
        {
            "trial_id": list("abcde"),
            "arch": "dense",
            "status": "done",
            "lam": [0.3, 0.5, 1.0, 2.0, 4.0],
            "kl_working": [False, False, True, True, True],
            "law_residual_max": [0.6, 0.4, 0.1, 0.05, 0.04],
            "settled": [True, False, False, True, True],  # 0.5 and 1.0 were still moving when they stopped
        }
    )
    star = lambda_star(trials, ["arch"]).iloc[0]
    assert star["lam_star"] == 2.0 and star["lam_star_trial"] == "d"  # not the unsettled 1.0
    assert star["lam_below"] == 0.3  # nor the unsettled 0.5 as the bracket
    assert star["n_unsettled"] == 2 and star["n_trials"] == 5
    none = lambda_star(trials.assign(settled=False), ["arch"]).iloc[0]
    assert np.isnan(none["lam_star"]) and none["n_unsettled"] == 5


@pytest.mark.parametrize(
    "change,needle",
    [
        ({"space": {"lam": {"grid": [1, 2]}}}, "optuna searches the space's ranges"),
        ({"scheduler": {"type": "asha"}}, "scheduler"),
        ({"search": {"type": "optuna", "start": [{"lr": 1}]}}, "search.start"),
        ({"search": {"type": "optuna", "sampler": {"type": "cmaes"}}}, "search.sampler.type"),
    ],
)
def test_bad_optuna_specs(change, needle):
    with pytest.raises(SpecError, match=needle.replace(".", r"\.")):
        spec_from_dict({**TINY_SEARCH, **change})
