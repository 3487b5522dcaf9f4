"""experiment: method (Sec. 7): phase 2's doubling + bisection on a stub with a known capacity, the advice's rules,
the spec check, the report's Method section, and a tiny real method study killed between phases and resumed."""

from __future__ import annotations

import math
import subprocess
import sys

import pandas as pd
import pytest
import yaml
from conftest import ROOT
from test_report import assert_refs_exist, synthetic_study

from analysis.method import method_chart
from analysis.report import build_report
from vaesweep.config.spec import SpecError, spec_from_dict
from vaesweep.experiments import kind
from vaesweep.experiments.method import VERDICTS, MethodSettings, advise, grow_latent
from vaesweep.study.method import METHOD_COLUMNS
from vaesweep.study.tables import load_study

# --- phase 2 on a stub: the data asks for ``capacity`` variables ----------------------------------------------------


def run_stub(capacity: int, start: int = 2, max_dim: int = 64, resolution: int = 1):
    """Drive grow_latent as the driver does, with a trial function whose n_active is min(d, capacity)."""
    tried: dict[int, int] = {}
    while (step := grow_latent(tried, start, max_dim, 1.0, resolution)).next_dim is not None:
        assert step.next_dim not in tried  # never the same latent dimension twice
        tried[step.next_dim] = min(step.next_dim, capacity)
    return step, tried


@pytest.mark.parametrize("capacity", [1, 2, 3, 5, 6, 7, 8, 13, 31, 40, 63])
def test_doubling_then_bisection_lands_on_the_capacity(capacity):
    step, tried = run_stub(capacity)
    if capacity < 2:  # sparse from the start
        assert (step.onset, step.following, step.n_active) == (2, None, capacity)
    else:
        assert (step.onset, step.following, step.n_active) == (capacity + 1, capacity, capacity)
    assert len(tried) <= 2 * math.ceil(math.log2(64)) + 1


def test_no_sparsity_up_to_max_and_a_coarser_resolution():
    step, tried = run_stub(100)
    assert (step.onset, step.following, step.n_active) == (None, 64, 64) and sorted(tried) == [2, 4, 8, 16, 32, 64]
    step, tried = run_stub(13, resolution=4)  # 16 does not follow, 8 does: bisect to 12 (follows), stop at 4 apart
    assert (step.onset, step.following) == (16, 12) and sorted(tried) == [2, 4, 8, 12, 16]
    # a result already known (phase 1's trial at search_latent_dim) is used, not trained again
    assert grow_latent({2: 2, 4: 4, 8: 6}, 2, 64).next_dim == 6


# --- phase 4: the rules of Sec. 7, steps 3-4 -------------------------------------------------------------------------

M = MethodSettings(generation_fid=50, reconstruction_fid=50)
CAP = grow_latent({2: 2, 4: 4, 8: 6, 6: 6, 7: 6}, 2, 64)


@pytest.mark.parametrize(
    "scores, verdict, words",
    [
        ((30, 40, 35), "satisfactory", "generation satisfactory"),
        ((37, 118, 45), "two_stage", "aggregate posterior mismatch — the second stage brings generation to 45"),
        ((37, 118, 66), "richer_architecture", "only to 66: try a richer architecture"),
        ((90, 118, 66), "richer_architecture", "generation and reconstruction unsatisfactory"),
    ],
)
def test_advice_follows_the_thresholds(scores, verdict, words):
    advice = advise("dense", M, 1.0, CAP, *scores)
    assert advice.verdict == verdict and verdict in VERDICTS
    assert advice.sentence.startswith("dense: lambda* = 1; sparsity from latent 7 (6 active); reconstructions")
    assert words in advice.sentence


def test_advice_without_lambda_star_or_scores():
    assert advise("conv", M, math.nan).verdict == "no_lambda"
    assert advise("conv", M, 2.0, CAP).verdict == "incomplete"


# --- the spec ------------------------------------------------------------------------------------------------------

METHOD = {"name": "m", "experiment": "method", "space": {"arch": {"grid": ["dense", "conv"]}}, "method": {"epochs": 3}}


def test_the_method_kind_is_driven_not_one_trainable():
    spec = spec_from_dict(METHOD)
    assert spec.kind is kind("method") and spec.kind.driver == "vaesweep.study.method:run_method"
    assert spec.kind_settings.epochs == 3 and not spec.kind.packable


@pytest.mark.parametrize(
    "change, needle",
    [
        ({"base": {"lam": 1.0}}, "base.lam: chosen by experiment: method"),
        ({"space": {"latent_dim": {"grid": [4, 8]}}}, "space.latent_dim: chosen by experiment: method"),
        ({"search": {"type": "random"}}, "search: experiment: method runs its own Optuna search"),
        ({"scheduler": {"type": "asha"}}, "scheduler: early stopping"),
        ({"method": {"lam_range": [2.0, 1.0]}}, "lam_range [2.0, 1.0]"),
        ({"method": {"start_latent_dim": 128}}, "start_latent_dim 128 is above max_latent_dim 64"),
    ],
)
def test_bad_method_specs(change, needle):
    with pytest.raises(SpecError, match="^study: .*" + needle.replace("[", r"\[").replace("]", r"\]")):
        spec_from_dict({**METHOD, **change})


# --- the report's Method section -----------------------------------------------------------------------------------


def test_the_report_opens_with_the_method_section(tmp_path):
    study = synthetic_study(tmp_path / "syn")
    table = pd.DataFrame(
        [
            {
                "dataset": "mnist5k",
                "arch": "dense",
                "seed": 0,
                "setting": "dense",
                "lam_below": 0.5,
                "lam_star": 2.0,
                "latent_onset": 8,
                "n_active_onset": 6,
                "fid_recon": 37.0,
                "fid_prior": 118.0,
                "fid_two_stage": 45.0,
                "verdict": "two_stage",
                "advice": "dense: lambda* = 2; ...",
            }
        ]
    )
    trials = load_study(study).trials
    evidence = trials[(trials["arch"] == "dense") & (trials["seed"] == 0)].assign(
        setting="dense", phase=lambda d: (d["lam"] == 2.0).map({True: 2, False: 1})
    )
    spec = yaml.safe_load((study / "study.yaml").read_text())  # the study is an experiment: method
    (study / "study.yaml").write_text(yaml.safe_dump({**spec, "experiment": "method"}))
    table.to_parquet(study / "method.parquet")
    evidence.to_parquet(study / "method_trials.parquet")
    index = build_report(study)
    page = index.read_text()
    assert page.index('<section id="method">') < page.index("<section", page.index('<section id="method">') + 1)
    assert page.index('<section id="method">') == page.index("<section")  # the first section
    assert "dense: lambda* = 2; ..." in page and (index.parent / "method.png").is_file()
    assert_refs_exist(index)
    assert method_chart(table.iloc[:0], evidence).skipped


# --- a real tiny method study: killed between phases, resumed ------------------------------------------------------

TINY = {
    "name": "m_tiny",
    "experiment": "method",
    "dataset": "mnist5k",
    # tiny trials: a two-evaluation window and every variable counted active make each settle at its 2nd epoch;
    # wide law tolerances let a 2-epoch model pass the laws (lambda* = the smallest lambda tried)
    "base": {
        "max_train": 256,
        "max_eval": 128,
        "hidden": [32],
        "threads": 1,
        "settle_patience": 2,
        "settle_min_steps": 0,
        "settle_law_tol": 100.0,
        "active_threshold": 1e-6,
        "law_tol": 100.0,
        "mu_tol": 100.0,
        "two_stage_epochs": 2,
        "fid_samples": 128,
    },
    "space": {"arch": {"grid": ["dense"]}},
    "method": {
        "lam_range": [0.5, 2.0],
        "search_trials": 2,
        "search_latent_dim": 4,
        "start_latent_dim": 2,
        "max_latent_dim": 8,
        "epochs": 2,
    },
    "resources": {"cpu": 1},
    "max_concurrent": 2,
    "retries": 0,
}
KILL_AT_ROUND = """
import sys
from vaesweep.config.spec import load_spec
from vaesweep.study import method, runner
real, rounds = method.build_tuner, []
def build_tuner(spec, out, quiet=False, folder=None):
    rounds.append(folder)
    if len(rounds) == 2:  # phase 2's second round: the driver dies here, its first round done
        sys.exit(9)
    return real(spec, out, quiet, folder)
method.build_tuner = build_tuner
runner.run_study(load_spec(sys.argv[1]), storage=sys.argv[2], quiet=True)
"""


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """The tiny method study killed in phase 2 after its first round, then run again to its end."""
    root = tmp_path_factory.mktemp("method")
    spec = root / "m_tiny.yaml"
    spec.write_text(yaml.safe_dump(TINY))
    killed = subprocess.run(
        [sys.executable, "-c", KILL_AT_ROUND, str(spec), str(root)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert killed.returncode == 9, killed.stderr[-3000:]
    before = load_study(root / "m_tiny")
    again = subprocess.run(
        [sys.executable, "-m", "vaesweep", "run", str(spec), "--storage", str(root), "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    return before, load_study(root / "m_tiny"), root / "m_tiny", again.stdout


@pytest.mark.slow
def test_a_killed_method_resumes_without_rerunning_finished_trials(resumed):
    before, after, _, _ = resumed
    assert len(before.trials) == 3 and before.trials["status"].eq("done").all()  # phase 1 (2) + one round
    assert sorted(before.trials["latent_dim"]) == [2, 4, 4]
    kept = after.trials.set_index("trial_id").loc[before.trials["trial_id"]]
    assert kept["status"].eq("done").all()

    def rows(t):
        return t.epochs[t.epochs["trial_id"].isin(before.trials["trial_id"])][["trial_id", "epoch", "time_total"]]

    pd.testing.assert_frame_equal(rows(before).reset_index(drop=True), rows(after).reset_index(drop=True))  # not re-run
    new = after.trials[~after.trials["trial_id"].isin(before.trials["trial_id"])]
    assert len(new) == 2 and sorted(new["latent_dim"]) == [8, 8]  # phase 2 went on to 8, then phase 3 there
    assert new["two_stage"].eq(True).sum() == 1


@pytest.mark.slow
def test_each_phase_lands_in_the_method_table(resumed):
    _, after, study, printed = resumed
    table = pd.read_parquet(study / "method.parquet")
    assert list(table.columns) == ["dataset", "arch", "seed", *METHOD_COLUMNS] and len(table) == 1
    row = table.iloc[0]
    search = after.trials[after.trials["latent_dim"] == 4]  # phase 1: lambda* the smallest lambda tried (all pass)
    assert row["lam_star"] == search["lam"].min() and row["lam_star_trial"] in set(search["trial_id"])
    assert (row["latent_following"], pd.isna(row["latent_onset"]), row["n_active_onset"]) == (8, True, 8)
    assert all(math.isfinite(row[k]) for k in ("fid_recon", "fid_prior", "fid_two_stage"))
    assert row["advice"].startswith(f"dense: lambda* = {row['lam_star']:.3g}; no sparsity up to latent 8 (8 active)")
    assert row["n_unsettled"] == 0 and row["n_trials"] == 5
    evidence = pd.read_parquet(study / "method_trials.parquet")
    assert sorted(evidence["phase"]) == [1, 1, 2, 2, 3]
    assert pd.read_parquet(study / "lambda_star.parquet")["n_trials"].tolist() == [2]  # phase 1's trials only
    assert '<section id="method">' in (study / "report" / "index.html").read_text()
    assert "report:" in printed
