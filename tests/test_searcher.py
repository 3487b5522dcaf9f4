"""The Optuna searcher: minimal lambda with a working KL term (Sec. 6.1), through Ray Tune."""

import optuna
import pandas as pd
import pytest
import yaml

from conftest import vaesweep_cli
from vaesweep.results import load_study
from vaesweep.searcher import lambda_star
from vaesweep.spec import SpecError, spec_from_dict

TINY_SEARCH = {
    "name": "lam_tiny",
    # loose tolerances so a 2-epoch model can pass the laws at large lambda
    "base": {"latent_dim": 4, "epochs": 2, "max_train": 500, "max_eval": 200, "hidden": [32],
             "law_tol": 0.5, "mu_tol": 0.5},
    "space": {"lam": {"loguniform": [0.1, 10.0]}},
    "search": {"type": "optuna", "num_samples": 4, "sampler": {"type": "gp", "n_startup_trials": 1},
               "start": [{"lam": 10.0}]},
    "resources": {"cpu": 1},
    "max_concurrent": 2,
}


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
    assert best["lam"] == star["lam_star"].iloc[0] == trials[trials["kl_working"]]["lam"].min()
    feasible = [t for t in complete if max(t.constraints.values()) <= 0]
    assert min(t.params["lam"] for t in feasible) == pytest.approx(star["lam_star"].iloc[0])

    # running it again resumes the same Optuna study: nothing new is tried
    res = vaesweep_cli("run", path, "--storage", tmp_path / "runs")
    assert res.returncode == 0, res.stderr[-3000:]
    assert len(optuna.load_study(study_name=name, storage=db).trials) == len(ot.trials)
    assert "minimal lambda" in res.stdout


def test_lambda_star_brackets_on_a_known_table():
    trials = pd.DataFrame({
        "trial_id": list("abcdef"), "arch": ["dense"] * 3 + ["conv"] * 3, "status": "done",
        "lam": [0.5, 1.0, 2.0, 0.3, 0.6, 1.2],
        "kl_working": [False, True, True, False, False, True],
        "law_residual_max": [0.4, 0.1, 0.05, 0.5, 0.2, 0.1],
    })
    star = lambda_star(trials, ["arch"]).set_index("arch")
    assert star.loc["dense", "lam_star"] == 1.0 and star.loc["dense", "lam_below"] == 0.5
    assert star.loc["conv", "lam_star"] == 1.2 and star.loc["conv", "lam_below_law_residual"] == 0.2


@pytest.mark.parametrize("change,needle", [
    ({"space": {"lam": {"grid": [1, 2]}}}, "optuna searches the space's ranges"),
    ({"scheduler": {"type": "asha"}}, "scheduler"),
    ({"search": {"type": "optuna", "start": [{"lr": 1}]}}, "search.start"),
    ({"search": {"type": "optuna", "sampler": {"type": "cmaes"}}}, "search.sampler.type"),
])
def test_bad_optuna_specs(change, needle):
    with pytest.raises(SpecError, match=needle.replace(".", r"\.")):
        spec_from_dict({**TINY_SEARCH, **change})
