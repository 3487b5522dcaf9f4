"""The Optuna searcher: minimal lambda with a working KL term (Sec. 6.1), through Ray Tune."""

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml
from conftest import vaesweep_cli

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
