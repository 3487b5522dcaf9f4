"""Stop when settled (issue 15): a trial with ``stop_when: settled`` ends at the first evaluation whose
collapse has settled, measuring there what a budget's last epoch measures; one that never settles runs its
budget; packed configurations end one by one with their plain runs' numbers; Ray's stopper and the recorder
name why each trial ended."""

import math
import shutil

import pytest
from conftest import recorded, vaesweep_cli
from test_packing import assert_same_trial

from vaesweep import SettledStopper, TrialRun, train_vae
from vaesweep.config.errors import SpecError
from vaesweep.config.spec import spec_from_dict
from vaesweep.engine.packing import PackedRun
from vaesweep.study.tables import load_study

# a two-evaluation window, any drift allowed, every variable active: settled at the 2nd epoch (step 16)
SETTLES = {"settle_patience": 2, "settle_min_steps": 0, "settle_law_tol": 100.0, "active_threshold": 1e-6}
NEVER = {"settle_patience": 2, "settle_min_steps": 0, "settle_law_tol": 1e-12}  # the residual always drifts
STEPS = 8  # tiny: 512 images, minibatches of 64


@pytest.fixture
def settles(tiny):
    return {**tiny, **SETTLES, "epochs": 5, "stop_when": "settled"}


def test_a_settled_trial_stops_at_its_settling_epoch_measuring_everything(settles):
    reports = []
    cfg = {**settles, "fid": True, "fid_samples": 100, "gain_every": 10}  # epoch 2 would have no gains
    result = train_vae(cfg, report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2]  # 2 of 5 epochs
    final = reports[-1]
    assert final["stopped_reason"] == "settled" and final["stopped_step"] == final["settled_step"] == 2 * STEPS
    assert "stopped_reason" not in reports[0]
    assert {k: result.summary[k] for k in ("stopped_reason", "stopped_step")} == {
        "stopped_reason": "settled",
        "stopped_step": 2 * STEPS,
    }
    assert {"fid_prior", "fid_recon", "fid_zeroed"} <= set(result.summary)  # the FID-proxy of a final epoch
    assert all(math.isfinite(r["recon_gain"]) for r in final["latents"])  # and its reconstruction gains


def test_min_steps_holds_a_settled_trial_back(settles):
    result = train_vae({**settles, "stop_min_steps": 3 * STEPS})
    assert len(result.history) == 3 and result.summary["stopped_step"] == 3 * STEPS
    assert result.summary["settled_step"] == 2 * STEPS  # settled earlier, stopped once min_steps was reached


def test_a_trial_that_never_settles_runs_its_budget(tiny):
    reports = []
    result = train_vae({**tiny, **NEVER, "epochs": 3, "stop_when": "settled"}, report=reports.append)
    assert [r["epoch"] for r in reports] == [1, 2, 3] and not reports[-1]["settled"]
    assert (reports[-1]["stopped_reason"], reports[-1]["stopped_step"]) == ("budget", 3 * STEPS)
    assert result.summary["stopped_reason"] == "budget"


def test_budget_is_the_default_even_when_settled(settles):
    result = train_vae({**settles, "stop_when": "budget", "epochs": 3})
    assert len(result.history) == 3 and result.summary["settled"]
    assert (result.summary["stopped_reason"], result.summary["stopped_step"]) == ("budget", 3 * STEPS)


def test_a_restored_final_trial_does_not_train_on(settles):
    run = TrialRun(settles)
    list(run.epochs())
    again = TrialRun(settles)
    again.load_state_dict(run.state_dict())
    assert list(again.epochs()) == [] and again.epoch == 2
    assert again.final_metrics()["stopped_reason"] == "settled"


def packed_configs(settles):
    return [
        {**settles, "seed": 1},  # settles at epoch 2
        {**settles, "seed": 2, "lam": 2.0, "latent_dim": 6, "stop_min_steps": 3 * STEPS},  # stops at epoch 3
        {**settles, "seed": 3, **NEVER, "epochs": 5},  # never settles: the budget, epoch 5
    ]


def test_packed_configurations_stop_one_by_one_with_their_plain_numbers(settles):
    cfgs = packed_configs(settles)
    run, reports, live = PackedRun(cfgs), [], []
    for metrics in run.epochs():
        reports.append(metrics)
        live.append(list(run.live))
    assert len(reports) == 5  # the pack ends when its last configuration does
    assert live == [[0, 1, 2], [1, 2], [2], [2], []]  # an ended configuration leaves the stack
    assert [r[0] is None for r in reports] == [False, False, True, True, True]
    assert [r[1].get("stopped_reason") for r in reports[1:3]] == [None, "settled"]
    assert reports[-1][2]["stopped_reason"] == "budget"
    for cfg, packed in zip(cfgs, run.results()):
        assert_same_trial(train_vae(cfg), packed)
        assert packed.summary["stopped_step"] == len(packed.history) * STEPS


def test_a_partly_ended_pack_resumes_from_its_checkpoint(settles):
    cfgs = packed_configs(settles)
    full = PackedRun(cfgs)
    list(full.epochs())
    first = PackedRun(cfgs)
    for _ in range(3):
        first.run_epoch()
    states = first.state_dicts()
    assert [s["epoch"] for s in states] == [2, 3, 3]  # an ended configuration's state as it ended
    resumed = PackedRun(cfgs)
    resumed.load_state_dicts(states)
    assert resumed.live == [2]
    assert [m is None for m in next(resumed.epochs())] == [True, True, False]
    list(resumed.epochs())
    for a, b in zip(full.results(), resumed.results()):
        assert a.summary == b.summary and a.latents == b.latents
    alone = TrialRun(cfgs[0])  # each state is still a TrialRun's: an ended one does not train on
    alone.load_state_dict(states[0])
    assert list(alone.epochs()) == [] and alone.result().summary == full.result(0).summary


# --- the study: spec, stopper, recorder ------------------------------------------------------------------


def spec(**extra):
    return spec_from_dict({"name": "s", "base": {"epochs": 3}, **extra})


def test_stop_reaches_every_trial():
    assert spec(stop={"when": "settled", "min_steps": 2000}).trial_base() == {
        "epochs": 3,
        "stop_when": "settled",
        "stop_min_steps": 2000,
    }
    assert spec().trial_base() == {"epochs": 3}  # the default leaves trial configs as they were


@pytest.mark.parametrize(
    ("extra", "names"),
    [
        ({"stop": {"when": "settled", "steps": 5}}, "stop.steps"),
        ({"stop": {"when": "soon"}}, "stop.when"),
        ({"stop": {"min_steps": -1}}, "stop.min_steps"),
        ({"stop": {"when": "settled"}, "base": {"stop_when": "budget"}}, "base.stop_when"),
        ({"stop": {"when": "settled"}, "space": {"stop_min_steps": {"grid": [0, 10]}}}, "space.stop_min_steps"),
        ({"stop": {"when": "settled"}, "experiment": "noise", "base": {}}, "stop: the noise experiment"),
    ],
)
def test_stop_mistakes_are_one_line_naming_the_field(extra, names):
    with pytest.raises(SpecError, match=names) as err:
        spec(**extra)
    assert "\n" not in str(err.value)


def test_the_stopper_ends_a_trial_on_its_final_report():
    stop = SettledStopper()
    assert not stop("t", {"epoch": 1, "settled": True})
    assert stop("t", {"epoch": 2, "stopped_reason": "settled"}) and stop("t", {"stopped_reason": "budget"})
    assert not stop("t", {"packed": [None, {"epoch": 3}]})
    assert stop("t", {"packed": [None, {"diverged": "nan"}, {"stopped_reason": "budget"}]})
    assert not stop.stop_all()


def test_the_trials_table_says_why_each_trial_stopped(settles, tmp_path):
    reports = []
    train_vae(settles, report=reports.append)
    trials = recorded(tmp_path / "a", settles, reports).trials
    assert (trials.stopped_reason.item(), trials.stopped_step.item(), trials.epochs_done.item()) == (
        "settled",
        2 * STEPS,
        2,
    )
    cut = recorded(tmp_path / "b", settles, reports[:1]).trials  # ended by ASHA before its final epoch
    assert cut.stopped_reason.item() == "scheduler"
    failed = recorded(tmp_path / "c", settles, [{"diverged": "loss became nan"}]).trials
    assert failed.stopped_reason.item() == "failed"


@pytest.mark.slow
def test_a_study_stops_settled_trials_and_resumes_without_retraining(real_study, tmp_path):
    """The shared study (tests/conftest.py REAL_STUDY: 3 epochs, stop: {when: settled}, each trial settled at
    its 2nd): Ray's stopper ended every trial there; running the finished study again trains nothing."""
    assert real_study.returncode == 0, real_study.printed
    before = load_study(real_study.study)
    assert set(before.trials.stopped_reason) == {"settled"}
    assert (before.trials.epochs_done == 2).all() and (before.trials.stopped_step == 2 * 4).all()
    assert before.epochs.epoch.max() == 2
    root = tmp_path / "copy"
    shutil.copytree(real_study.study.parent, root)
    again = vaesweep_cli("run", root / "tiny.yaml", "--storage", root, "--quiet", timeout=400)
    assert again.returncode == 0, again.stdout + again.stderr[-3000:]
    after = load_study(root / "tiny")
    a, b = (t.trials.sort_values("trial_id").reset_index(drop=True) for t in (after, before))
    assert set(a.columns) == set(b.columns) and a[list(b.columns)].equals(b)  # the same cells (column order aside)
    assert len(after.epochs) == len(before.epochs)
