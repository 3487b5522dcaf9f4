"""What a study prints: a line per change when its output goes to a file, one display redrawn in place on a
terminal, and the answers at the end (onset of sparsity, where the KL term works, which trials settled)."""

import io
import logging
from collections import Counter

import pandas as pd
import pytest
import yaml

from vaesweep.cli.answers import answer_lines, planned
from vaesweep.study.progress import Progress

BANNERS = ("Configuration for experiment", "View detailed results here", "Token authentication", "Trial status")


@pytest.mark.slow
def test_run_into_a_file_prints_changes_and_the_answers(real_study):
    assert real_study.returncode == 0, real_study.printed
    lines = real_study.stdout.splitlines()
    assert len(lines) <= 40, real_study.stdout
    assert not [line for line, n in Counter(lines).items() if n > 1], real_study.stdout  # no line said twice
    assert not [b for b in BANNERS if b in real_study.printed], real_study.printed  # Ray's banners: --verbose only
    progress = [line for line in lines if line.startswith("[tiny ")]
    trials = pd.read_parquet(real_study.study / "trials.parquet")
    for tid in trials["trial_id"]:  # each trial: a line when it starts, one when it stops and why
        mine = [line for line in progress if f"] {tid} " in line]  # (arch: one value, not named)
        assert any(line.endswith(" started") for line in mine), progress
        assert any(" stopped (settled) at epoch 2: " in line for line in mine), progress
    index = lines.index("active variables at each latent dimension d (settled trials, mean over seeds):")
    header, row = lines[index + 1].split(), lines[index + 2].split()
    assert header == ["d=2", "d=8", "onset", "of", "sparsity"] and row[:2] == ["dense", "λ=1"]
    assert row[2:4] == ["2", "8"]  # active_threshold 1e-6: every variable counts as active, no onset
    assert " ".join(row[4:]) == "none up to d=8"
    kl = lines.index("where the KL term works (Sec. 4 variance law within 0.15, settled trials, most seeds):")
    assert lines[kl + 1].startswith("  dense λ=1: fails at d=2, 8 (law residual ")
    assert "  2 of 2 finished trials settled" in lines
    assert lines[-1] == f"report: {real_study.study / 'report' / 'index.html'}"


def rows(*trials) -> pd.DataFrame:
    base = {"latent_dim": 8, "lam": 1.0, "epochs_done": 3, "n_active": 5, "law_residual_max": 0.3, "settled": False}
    return pd.DataFrame([{**base, **t} for t in trials])


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_file_gets_one_line_per_change_and_a_terminal_one_display(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    log = io.StringIO()
    progress = Progress("s", 2, ["latent_dim"], stream=log)
    running = rows({"trial_id": "t0", "status": "running"}, {"trial_id": "t1", "status": "pending"})
    for _ in range(3):  # flush after flush with nothing new: nothing printed again
        progress.show(running)
    progress.show(running.assign(settled=[True, False]))  # settled: said if it still holds at the next flush
    progress.show(running.assign(settled=[True, False]))
    progress.note("t0 failed (OSError: node lost); retried from its last checkpoint")
    progress.show(running.assign(settled=[True, False], status=["done", "running"], stopped_reason="settled"))
    printed = [line.split("] ", 1)[1] for line in log.getvalue().splitlines()]
    assert printed == [
        "t0 latent_dim=8 started",
        "t0 latent_dim=8 settled at epoch 3: 5 active, law residual 0.30, settled",
        "t0 failed (OSError: node lost); retried from its last checkpoint",
        "t0 latent_dim=8 stopped (settled) at epoch 3: 5 active, law residual 0.30, settled [1/2 done]",
        "t1 latent_dim=8 started",
    ]

    screen = Terminal()
    progress = Progress("s", 2, ["latent_dim"], stream=screen)
    for epoch in (1, 2):
        progress.show(running.assign(epochs_done=epoch))
    progress.close()
    drawn = screen.getvalue()
    assert drawn.count("\r") >= 4  # the bar and the trial's line, redrawn in place (carriage returns)
    assert "s: 0/2 trials" in drawn and "1 running, 0 failed, 0 settled" in drawn
    assert "t0 latent_dim=8  epoch 2: 5 active, law residual 0.30, not settled" in drawn
    assert "started" not in drawn  # the display, not the log's lines


def test_ray_says_it_is_slow_once_unless_verbose(caplog):
    from vaesweep.study.cluster import SLOW_LOGGERS, ray_output

    slow = "The `process_trial_result` operation took 0.689 s, which may be a performance bottleneck."
    for verbose, expected in ((False, 1), (True, 3)):
        ray_output(verbose)
        caplog.clear()
        for name in (*SLOW_LOGGERS, SLOW_LOGGERS[0]):
            logging.getLogger(name).warning(slow)
        logging.getLogger(SLOW_LOGGERS[0]).warning("Trial t0 errored")  # other warnings: always
        assert [r.getMessage() for r in caplog.records] == [slow] * expected + ["Trial t0 errored"]
    ray_output(False)


def test_status_counts_the_trials_the_spec_runs_not_those_created_so_far(tmp_path):
    """Issue 29, point 10: a 3-trial study with 2 trials created reads '1/3 done', not '1/2'."""
    spec = {"name": "three", "base": {"epochs": 1}, "space": {"latent_dim": {"grid": [2, 4, 8]}}}
    (tmp_path / "study.yaml").write_text(yaml.safe_dump(spec))
    trials = pd.DataFrame(
        {"trial_id": ["t_0", "t_1"], "latent_dim": [2, 4], "status": ["done", "running"], "error": [None, None]}
    )
    trials.to_parquet(tmp_path / "trials.parquet", index=False)
    assert answer_lines(tmp_path)[0] == "[three] 1/3 done, 1 running, 0 failed, 0 settled"
    assert planned({}, 2) == 2 and planned({"name": "x", "seeds": 0}, 2) == 2  # no spec, a broken one: the tables
