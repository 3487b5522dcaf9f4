"""When a trial's collapse has settled (vaesweep/engine/settle.py): the rule on synthetic histories with
known answers, and the settled columns of real trials (history, checkpoints, train --json)."""

import json

import pytest
from pydantic import ValidationError

from vaesweep import TrialConfig, TrialRun, train_vae
from vaesweep.cli.main import main
from vaesweep.engine.settle import SettleTracker, settle_history

RULE = {"patience": 3, "min_steps": 200, "law_tol": 0.05}  # evaluations every 100 steps: windows of 3


def answers(sets, residuals=None, steps=None, **rule):
    steps = steps or [100 * (i + 1) for i in range(len(sets))]
    residuals = residuals or [0.2] * len(sets)
    got = settle_history(zip(steps, sets, residuals), **{**RULE, **rule})
    return [g["settled"] for g in got], [g["settled_step"] for g in got]


def test_a_collapse_that_settles():
    sets = [{0, 1, 2, 3}, {0, 1, 2}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}, {0, 1}]
    settled, step = answers(sets, [0.5, 0.3, 0.2, 0.2, 0.21, 0.2, 0.2, 0.2])
    assert settled == [False] * 4 + [True] * 4
    assert step == [None] * 4 + [500] * 4  # the first evaluation whose window held still


def test_a_law_residual_that_keeps_moving_never_settles():
    sets = [{0, 1}] * 8  # the active set never changes, but Q(z) keeps moving (Sec. 4)
    settled, step = answers(sets, [1.0 - 0.1 * i for i in range(8)])
    assert settled == [False] * 8 and step == [None] * 8
    settled, _ = answers(sets, [1.0 - 0.1 * i for i in range(8)], law_tol=0.25)  # a looser tolerance
    assert settled == [False, False] + [True] * 6


def test_a_noisy_plateau_settles_but_a_drift_does_not():
    """law_residual_max jumps +-0.05 between evaluations on a plateau (mnist5k): the half means hold
    still, so it settles, though max - min over the window (0.1) exceeds the tolerance; the same jumps
    on a downward trend of 0.04 per evaluation do not settle."""
    sets = [{0, 1}] * 10
    plateau = [0.30, 0.40] * 5
    settled, step = answers(sets, plateau, patience=4, min_steps=300)
    assert settled == [False] * 3 + [True] * 7 and step[-1] == 400
    trend = [r - 0.04 * i for i, r in enumerate(plateau)]
    settled, _ = answers(sets, trend, patience=4, min_steps=300)
    assert not any(settled)


def test_a_variable_that_revives_breaks_the_settled_run():
    sets = [{0, 1}] * 6 + [{0, 1, 2}] * 3
    settled, step = answers(sets)
    assert settled == [False, False, True, True, True, True, False, False, True]
    assert step == [None, None, 300, 300, 300, 300, None, None, 900]


def test_same_count_other_set_is_not_settled():
    sets = [{0, 1}] * 3 + [{0, 2}] * 3  # two active variables throughout, but not the same two
    settled, step = answers(sets)
    assert settled == [False, False, True, False, False, True]
    assert step == [None, None, 300, None, None, 600]


def test_the_window_needs_both_patience_and_min_steps():
    still = [{0}] * 12
    # patience alone: 5 evaluations, however few minibatches they span
    assert answers(still, patience=5, min_steps=0)[1][:6] == [None] * 4 + [500, 500]
    # min_steps alone binds: 3 evaluations span only 200 steps, 1000 needs 11 evaluations
    assert answers(still, min_steps=1000)[1][9:] == [None, 1100, 1100]
    # the window grows past `patience` evaluations until it spans min_steps
    steps, sets = [100, 200, 300, 400, 500], [{0, 1}, {0}, {0}, {0}, {0}]
    settled, step = answers(sets, steps=steps, min_steps=250)
    assert settled == [False, False, False, False, True] and step[-1] == 500  # at 400 the window reaches 100
    with pytest.raises(ValidationError, match="settle_patience"):
        TrialConfig(settle_patience=1)


def test_tracker_state_is_plain_data_and_resumes():
    history = [(100 * (i + 1), {0, 1} if i < 6 else {0, 1, 2}, 0.2) for i in range(10)]
    whole = settle_history(history, **RULE)
    first = SettleTracker(**RULE)
    for ev in history[:5]:
        first.observe(*ev)
    state = json.loads(json.dumps(first.state_dict()))  # plain data
    assert len(state["evals"]) == RULE["patience"]  # only what a later window can start from
    second = SettleTracker.from_state(state)
    assert whole[5:] == [second.observe(*ev) for ev in history[5:]]


def test_the_verdict_is_steady_only_when_the_whole_window_agrees():
    """A residual creeping across law_tol (0.15) inside the drift tolerance: settled, but its Sec. 4 verdict
    flips within the window, so a settled stop waits until the window holds one verdict."""
    residuals = [0.20, 0.19, 0.18, 0.17, 0.16, 0.15, 0.14, 0.13, 0.13, 0.13]
    tracker = SettleTracker(**RULE)
    steady = []
    for i, r in enumerate(residuals):
        tracker.observe(100 * (i + 1), {0, 1}, r, r <= 0.15)
        steady.append((tracker.settled, tracker.verdict_steady))
    assert all(settled for settled, _ in steady[2:])  # drift 0.01-0.02 per evaluation: settled from the third
    assert [v for _, v in steady] == [False, False, True, True, True, False, False, True, True, True]
    legacy = SettleTracker.from_state({**tracker.state_dict(), "evals": [(900, [0, 1], 0.13), (1000, [0, 1], 0.13)]})
    assert legacy.evals[-1] == (1000, [0, 1], 0.13, None)  # a checkpoint from before the verdict resumes


# --- real trials ------------------------------------------------------------------------------

FAST_SETTLE = {"epochs": 5, "eval_every": 1, "settle_patience": 2, "settle_min_steps": 8, "settle_law_tol": 100.0}


def test_trial_history_carries_the_rule_over_its_evaluations(tiny):
    seen = []
    result = train_vae({**tiny, **FAST_SETTLE}, report=seen.append)
    evals = [(m["step"], [r["latent"] for r in m["latents"] if r["active"]], m["law_residual_max"]) for m in seen]
    expected = settle_history(evals, 2, 8, 100.0)
    assert [{"settled": h["settled"], "settled_step": h["settled_step"]} for h in result.history] == expected
    assert {k: result.summary[k] for k in ("settled", "settled_step")} == expected[-1]
    # the default window (5 evaluations, 1,500 minibatches): one epoch of 8 minibatches is not settled
    assert not train_vae({**tiny, "epochs": 1}).summary["settled"]


def test_resume_gives_the_same_settled_columns(tiny):
    cfg = {**tiny, **FAST_SETTLE}
    full = train_vae(cfg)
    first = TrialRun(cfg)
    next(first.epochs()), next(first.epochs())
    state = first.state_dict()
    second = TrialRun(cfg)
    second.load_state_dict(state)
    for _ in second.epochs():
        pass
    cols = ("epoch", "settled", "settled_step")
    assert [[h[c] for c in cols] for h in second.history] == [[h[c] for c in cols] for h in full.history]
    old = {k: v for k, v in state.items() if k != "settle"}  # a checkpoint from before the settle columns
    third = TrialRun(cfg)
    third.load_state_dict(old)
    assert next(third.epochs())["epoch"] == 3 and len(third.settle.evals) == 1


def test_train_json_and_table_print_the_settled_columns(capsys):
    args = [
        "train",
        "--epochs",
        "3",
        "--max-train",
        "512",
        "--max-eval",
        "200",
        "--hidden",
        "32",
        "--threads",
        "1",
        "--no-fid",
        "--latent-dim",
        "3",
        "--settle-patience",
        "2",
        "--settle-min-steps",
        "0",
        "--settle-law-tol",
        "100",
    ]
    assert main([*args, "--json"]) == 0
    printed = capsys.readouterr()
    out = json.loads(printed.out)
    assert isinstance(out["settled"], bool) and out["config"]["settle_patience"] == 2
    assert (out["settled_step"] is None) == (not out["settled"])
    assert "settled" in printed.err  # the progress line says it each evaluated epoch
    assert main(args[:-6]) == 0  # the default window: not settled after 24 minibatches
    table = capsys.readouterr().out
    assert "settled: False" in table and "not settled: " in table and "--settle-min-steps" in table
