"""The analysis report: charts from a study's tables, the onset of sparsity, the HTML page."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.capacity import onset_of_sparsity
from analysis.latents import table1
from analysis.law import law_heatmap
from vaesweep.cli import main
from vaesweep.report import build_report, choose_trials, to_markdown

ALL_CHARTS = ("capacity", "law_heatmap", "table1", "fig2_var_mu", "fid", "fig3_samples", "gain_vs_kl")


# --- helpers --------------------------------------------------------------------------------------

class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        self.refs += [v for k, v in attrs if k in ("src", "href") and v and not v.startswith("#")]


def html_refs(index: Path) -> list[str]:
    p = _Refs()
    p.feed(index.read_text())
    return p.refs


def assert_refs_exist(index: Path) -> list[str]:
    refs = html_refs(index)
    assert refs, "the page references no file"
    for ref in refs:
        assert "://" not in ref and not ref.startswith("/"), f"not a local relative file: {ref}"
        assert (index.parent / ref).is_file(), f"index.html references a missing file: {ref}"
    return refs


def synthetic_study(path: Path, archs=("dense", "conv"), dims=(2, 4, 8, 16), lams=(0.5, 2.0), seeds=(0, 1),
                    fid=True, lambda_star=True, settled=True, moving=None) -> Path:
    """A study folder with known answers: with lambda=0.5 a model uses at most 10 variables, with
    lambda=2 at most 6 (so sparsity starts at d=16 and d=8); the KL term works when lambda=2.

    ``moving`` {(latent_dim, lam): n_active}: those trials had not settled and show that (moving)
    count instead; ``settled`` False: no trial settled; None: a study from before the column."""
    cap, moving = {0.5: 10, 2.0: 6}, moving or {}
    trials, latents, history, epochs = [], [], [], []
    for i, (arch, d, lam, seed) in enumerate(itertools.product(archs, dims, lams, seeds)):
        tid = f"syn_{i:05d}"
        n_active = moving.get((d, lam), min(d, cap[lam]))
        residual = 0.05 if lam == 2.0 else 0.8
        row = {"trial_id": tid, "arch": arch, "latent_dim": d, "lam": lam, "seed": seed, "epochs": 3,
               "hidden": [32, 16], "status": "done", "error": None, "n_active": n_active,
               "n_inactive": d - n_active, "law_residual_max": residual * (1 + 0.1 * seed),
               "mean_mu_abs_max": 0.05, "recon": 100.0 - n_active, "kl": 2.0 * n_active, "elbo": -100 - n_active,
               "kl_working": lam == 2.0, "epochs_done": 3, "time_total": 1.0}
        if settled is not None:
            row["settled"] = bool(settled) and (d, lam) not in moving
            row["settled_step"] = 20.0 if row["settled"] else None
        if fid:
            row.update(fid_prior=50.0 / lam + d, fid_recon=10.0 + d, fid_zeroed=50.0 / lam + d + 0.1)
        trials.append(row)
        for epoch in (1, 2, 3):
            epochs.append({"trial_id": tid, "epoch": epoch, "step": 10 * epoch, "train_loss": 1.0})
            for j in range(d):
                active = j < n_active
                r = {"trial_id": tid, "epoch": epoch, "latent": j, "mean_mu": 0.0,
                     "var_mu": (0.3 * epoch) if active else 1e-4, "mean_sigma2": 0.05 if active else 0.98,
                     "kl": 2.0 if active else 0.001, "recon_gain": 5.0 + j if active else 0.0, "active": active}
                r["law"] = r["var_mu"] + r["mean_sigma2"]
                history.append(r)
                if epoch == 3:
                    latents.append(r)
    trials.append({"trial_id": "syn_failed", "arch": "dense", "latent_dim": 4, "lam": 0.5, "seed": 9, "epochs": 3,
                   "hidden": [32, 16], "status": "failed", "error": "loss became nan"})
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("trials", trials), ("latents", latents), ("latent_history", history), ("epochs", epochs)):
        pd.DataFrame(rows).to_parquet(path / f"{name}.parquet", index=False)
    if lambda_star:
        pd.DataFrame([{"arch": a, "latent_dim": d, "lam_star": 0.7 + 0.1 * k} for a in archs
                      for k, d in enumerate(dims)]).to_parquet(path / "lambda_star.parquet", index=False)
    (path / "study.yaml").write_text(yaml.safe_dump({"name": path.name, "metric": "elbo", "mode": "max"}))
    return path


# --- the onset of sparsity ------------------------------------------------------------------------

def test_onset_of_sparsity_known_answers():
    rows = []
    lines = {  # group -> {d: n_active of seed 0, seed 1}
        "clean": {2: (2, 2), 4: (4, 4), 8: (8, 8), 16: (9, 10), 32: (9, 9)},        # onset 16
        "half_seed": {2: (2, 2), 4: (3, 4), 8: (7, 6), 16: (8, 8), 32: (8, 9)},     # d=4 mean 0.5 inactive -> 8
        "blip": {2: (2, 2), 4: (3, 3), 8: (8, 8), 16: (12, 12), 32: (12, 12)},      # d=4 alone collapses -> 16
        "never": {2: (2, 2), 4: (4, 4), 8: (8, 8), 16: (16, 16), 32: (32, 32)},     # no onset
    }
    for group, per_d in lines.items():
        for d, actives in per_d.items():
            rows += [{"group": group, "latent_dim": d, "seed": s, "n_active": a, "n_inactive": d - a}
                     for s, a in enumerate(actives)]
    got = onset_of_sparsity(pd.DataFrame(rows).sample(frac=1, random_state=0), by=["group"]).set_index("group")
    assert got.loc["clean", "onset"] == 16
    assert got.loc["clean", "n_active_at_onset"] == 9.5
    assert got.loc["half_seed", "onset"] == 8
    assert got.loc["blip", "onset"] == 16
    assert np.isnan(got.loc["never", "onset"])
    assert (got["largest_tested"] == 32).all()
    # a stricter threshold moves the onset: at least 3 inactive variables on average
    strict = onset_of_sparsity(pd.DataFrame(rows), by=["group"], min_inactive=3).set_index("group")
    assert strict.loc["clean", "onset"] == 16 and strict.loc["half_seed", "onset"] == 16


# --- reports from synthetic tables ----------------------------------------------------------------

@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory):
    study = synthetic_study(tmp_path_factory.mktemp("syn") / "syn")
    return study, build_report(study)


def test_synthetic_report_has_every_chart_but_samples(synthetic_report):
    study, index = synthetic_report
    assert index == study / "report" / "index.html"
    refs = assert_refs_exist(index)
    for key in ALL_CHARTS:
        if key == "fig3_samples":  # no checkpoints in a synthetic study: a note, not an error
            assert not (index.parent / f"{key}.png").exists()
            assert "Sample grids need the trained models: no usable checkpoint under" in index.read_text()
        else:
            assert f"{key}.png" in refs
    page = index.read_text()
    assert "(no lambda_star.parquet" not in page  # the Optuna λ* was found and drawn
    assert "syn_failed" in (index.parent / "trials.csv").read_text()  # failed trials listed, not charted


def test_synthetic_report_onset_table_is_right(synthetic_report):
    _, index = synthetic_report
    onset = pd.read_csv(index.parent / "onset.csv")
    assert len(onset) == 4  # 2 architectures x 2 lambdas
    assert set(onset[onset["lam"] == "λ=0.5"]["onset"]) == {16}
    assert set(onset[onset["lam"] == "λ=2"]["onset"]) == {8}
    assert "Variables start to collapse (onset of sparsity) at latent dimension" in index.read_text()


def test_table1_highlights_inactive_variables(synthetic_report):
    _, index = synthetic_report
    tables = sorted(index.parent.glob("table1_*.csv"))
    assert len(tables) == 2  # one representative trial per architecture
    for t in tables:
        df = pd.read_csv(t)
        # the chosen trial is one where the KL term works (lambda=2) and sparsity shows: 6 active of 8 or 16
        assert df["active"].sum() == 6 and (~df["active"]).sum() >= 2
        assert list(df.columns[:3]) == ["latent", "var_mu", "mean_sigma2"]
        assert "**no**" in t.with_suffix(".md").read_text()
    assert "#f9d3d3" in index.read_text()  # inactive rows in red


def test_law_heatmap_draws_lambda_star_where_it_belongs(synthetic_report):
    study, _ = synthetic_report
    trials = pd.read_parquet(study / "trials.parquet")
    stars = pd.DataFrame({"arch": ["dense", "dense", "dense", "conv", "conv"], "latent_dim": [2, 2, 16, 2, 4],
                          "seed": [0, 1, 0, 0, 0], "lam_star": [0.49, 1.0, 4.0, 2.0, np.nan],
                          "lam_star_trial": ["a", "b", "c", "d", None]})  # searcher.lambda_star's columns
    chart = law_heatmap(trials, stars)
    panels = {ax.get_title(): ax for ax in chart.figure.axes}
    dense, conv = panels["arch = dense"], panels["arch = conv"]
    (line,) = [ln for ln in dense.lines if ln.get_marker() == "D"]
    # rows from the top: λ=2 (y 0.5), λ=0.5 (y 1.5); columns d = 2, 4, 8, 16 at x 0.5 ... 3.5
    assert list(line.get_xdata()) == [0.5, 3.5]
    y = line.get_ydata()
    # seeds 0 and 1 at d=2: geometric mean 0.7, between the rows on the log scale
    assert y[0] == pytest.approx(1.5 - np.log(0.7 / 0.5) / np.log(4))
    assert y[1] == 0.0  # λ* above the largest λ tried: at the map's top edge
    (line,) = [ln for ln in conv.lines if ln.get_marker() == "D"]
    assert list(line.get_ydata()) == [0.5] and list(line.get_xdata()) == [0.5]  # d=4: no working λ found
    no_stars = law_heatmap(trials)
    assert not [ln for ax in no_stars.figure.axes for ln in ax.lines if ln.get_marker() == "D"]
    assert "no lambda_star.parquet" in no_stars.reading and "in 8 of 16 cells" in no_stars.reading


def test_choose_trials_prefers_working_and_sparse(tmp_path):
    study = synthetic_study(tmp_path / "s", fid=False, lambda_star=False)
    trials = pd.read_parquet(study / "trials.parquet")
    chosen = choose_trials(trials)
    assert sorted(chosen["arch"]) == ["conv", "dense"]
    assert (chosen["lam"] == 2.0).all() and (chosen["n_inactive"] > 0).all()
    picked = choose_trials(trials, ids=["syn_00003"])
    assert list(picked["trial_id"]) == ["syn_00003"]
    with pytest.raises(ValueError, match="no such trial"):
        choose_trials(trials, ids=["nope"])


def test_report_adapts_to_a_study_that_varied_nothing(tmp_path):
    study = synthetic_study(tmp_path / "one", archs=("dense",), dims=(16,), lams=(2.0,), seeds=(0,), fid=False,
                            lambda_star=False)
    index = build_report(study)
    page = index.read_text()
    assert_refs_exist(index)
    for key in ("capacity", "law_heatmap", "fid", "fig3_samples"):
        assert not (index.parent / f"{key}.png").exists()
    assert "The study tried one latent dimension only (16)" in page
    assert "fixed both λ and the latent dimension" in page
    assert "no FID-proxy values" in page
    for key in ("table1", "fig2_var_mu", "gain_vs_kl"):  # the per-trial views still work
        assert (index.parent / f"{key}.png").is_file()


def test_report_of_a_study_with_no_finished_trial(tmp_path):
    study = tmp_path / "fresh"
    study.mkdir()
    pd.DataFrame([{"trial_id": "a_00000", "latent_dim": 4, "lam": 1.0, "seed": 0, "status": "running",
                   "error": None}]).to_parquet(study / "trials.parquet")
    index = build_report(study)
    assert_refs_exist(index)
    page = index.read_text()
    assert page.count('class="note"') == len(ALL_CHARTS) and "0 of 1 trials finished" in page


def test_report_marks_unsettled_trials_and_reads_settled_ones_only(tmp_path):
    # at d=8, lambda=0.5 the trials had not settled and show a count still moving (5 active):
    # counted, they would move that line's onset of sparsity from 16 to 8
    study = synthetic_study(tmp_path / "moving", moving={(8, 0.5): 5})
    index = build_report(study)
    out, page = index.parent, index.read_text()
    assert_refs_exist(index)
    onset = pd.read_csv(out / "onset.csv")
    assert set(onset[onset["lam"] == "λ=0.5"]["onset"]) == {16}
    assert set(onset[onset["lam"] == "λ=2"]["onset"]) == {8}
    assert list(onset[onset["lam"] == "λ=0.5"]["n_left_out (not settled)"]) == [2, 2]  # 2 seeds per arch
    assert "4 of 32 trials left out: not settled, hollow circles)." in page  # the onset's reading
    law = pd.read_csv(out / "law_residual.csv")
    cell = law[(law["lam"] == "λ=0.5") & (law["latent_dim"] == 8)]
    assert cell["law_residual_max (mean)"].isna().all() and (cell["n_left_out (not settled)"] == 2).all()
    assert "4 of 32 trials left out: not settled; hatched cells" in page  # the heatmap's reading
    assert "in 8 of 14 cells" in page  # the two unsettled-only cells are not read
    trials = pd.read_csv(out / "trials.csv")
    assert (~trials.loc[trials["latent_dim"].eq(8) & trials["lam"].eq(0.5), "settled"]).all()
    assert trials["settled"].sum() == 28
    assert "| **no** |" in (out / "trials.md").read_text() and "font-style: italic" in page
    first = page.split("<body>")[1].strip().splitlines()[0]
    assert first.startswith('<p class="warning">4 of 32 finished trials did not settle')
    fid = pd.read_csv(out / "trials.csv")  # the FID-proxy and gain charts say so too
    assert "(4 of 32 trials not settled: hollow circles)" in page and len(fid) == 33


def test_report_when_no_trial_settled(tmp_path, capsys):
    study = synthetic_study(tmp_path / "none", archs=("dense",), settled=False, fid=False, lambda_star=False)
    assert main(["report", str(study)]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0].startswith("No trial settled: their active set was still changing at the end. Raise")
    page = (study / "report" / "index.html").read_text()
    assert page.split("<body>")[1].strip().startswith('<p class="warning">No trial settled:')
    assert "All 16 trials left out: not settled" in page  # onset of sparsity and law heatmap: not read
    for key in ("capacity", "law_heatmap"):
        assert not (study / "report" / f"{key}.png").exists()
    assert "(not settled)" in page  # Table 1 and Fig. 2 of the chosen trial say it
    assert set(pd.read_csv(next((study / "report").glob("table1_*.csv")))["settled"]) == {False}


def test_report_of_a_study_from_before_the_settled_column(tmp_path):
    study = synthetic_study(tmp_path / "old", archs=("dense",), settled=None, fid=False, lambda_star=False)
    index = build_report(study)
    page = index.read_text()
    assert page.split("<body>")[1].strip().startswith('<p class="warning">Settled status unknown')
    assert (index.parent / "capacity.png").is_file() and (index.parent / "law_heatmap.png").is_file()
    assert "not settled" not in page and "settled" not in pd.read_csv(index.parent / "trials.csv")
    assert "n_left_out (not settled)" not in pd.read_csv(index.parent / "onset.csv")


def test_table1_is_callable_from_python_on_dataframes(synthetic_report):
    study, _ = synthetic_report
    latents = pd.read_parquet(study / "latents.parquet")
    trials = pd.read_parquet(study / "trials.parquet")
    chart = table1(latents, trials[trials["trial_id"] == "syn_00013"])
    assert not chart.skipped and chart.figure.axes
    assert chart._repr_png_().startswith(b"\x89PNG")
    assert "inactive variables have Var[μ] ≤ 0.0001" in chart.reading


def test_to_markdown():
    md = to_markdown(pd.DataFrame({"latent": [0, 1], "var_mu": [1.23456789, 1e-5], "active": [True, False]}))
    assert md.splitlines() == ["| latent | var_mu | active |", "| --- | --- | --- |",
                               "| 0 | 1.235 | yes |", "| 1 | 1e-05 | **no** |"]


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no study results" in capsys.readouterr().err
    study = synthetic_study(tmp_path / "s", archs=("dense",), dims=(4,), lams=(2.0,), seeds=(0,), fid=False)
    assert main(["report", str(study), "--trial", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaesweep: error: --trial nope: no such trial") and "\n" not in err


def test_run_survives_a_failing_report(tmp_path, monkeypatch, capsys):
    import vaesweep.report
    import vaesweep.study

    study = synthetic_study(tmp_path / "s", archs=("dense",), dims=(4,), lams=(2.0,), seeds=(0,), fid=False)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vaesweep.study, "run_study", lambda *a, **k: study)
    monkeypatch.setattr(vaesweep.report, "build_report", broken)
    assert main(["run", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "report: not written (RuntimeError: disk full)" in out
    assert "1/2 done, 0 running, 1 failed" in out and "syn_00000" in out  # the status still printed


# --- a report from a real (tiny) Ray study --------------------------------------------------------

REAL_STUDY = """
name: tiny
dataset: mnist5k
base: {epochs: 2, max_train: 512, max_eval: 128, hidden: [32], lam: 1.0, track_every: 2, gain_every: 1,
       fid: false, settle_patience: 2, settle_min_steps: 0, settle_law_tol: 100.0, active_threshold: 1.0e-6}
# (a two-epoch window and every variable counted active: each trial settles at its second epoch, so the
# charts that read settled trials only are drawn)
space:
  arch: {grid: [dense]}
  latent_dim: {grid: [2, 8]}
seeds: 1
resources: {cpu: 1, gpu: 0}
max_concurrent: 2
retries: 0
"""


@pytest.fixture(scope="module")
def real_study(tmp_path_factory):
    """One real study through ``python -m vaesweep run`` (its own process and Ray), which writes
    the report at its end."""
    root = tmp_path_factory.mktemp("real")
    spec = root / "tiny.yaml"
    spec.write_text(REAL_STUDY)
    res = subprocess.run([sys.executable, "-m", "vaesweep", "run", str(spec), "--storage", str(root), "--quiet"],
                         cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=400,
                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return root / "tiny", res.returncode, res.stdout + res.stderr[-3000:]


@pytest.mark.slow
def test_run_writes_a_report_with_every_applicable_chart(real_study):
    study, rc, printed = real_study
    assert rc == 0, printed
    index = study / "report" / "index.html"
    assert f"report: {index}" in printed
    refs = assert_refs_exist(index)
    trials = pd.read_parquet(study / "trials.parquet")
    has_fid = any(c.startswith("fid_") and trials[c].notna().any() for c in trials.columns)
    expected = [k for k in ALL_CHARTS if k != "fid" or has_fid]
    for key in expected:
        assert f"{key}.png" in refs, f"chart {key} missing: {index.read_text()[:2000]}"
        png = index.parent / f"{key}.png"
        assert png.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    if not has_fid:
        assert "no FID-proxy values" in index.read_text()
    page = index.read_text()
    assert page.count('class="reading"') == len(expected)  # one reading under every chart
    assert "(from the minibatch trace)" in page  # the study set track_every: Fig. 2 uses the trace
    for table in ("trials", "onset", "law_residual"):
        assert (index.parent / f"{table}.csv").is_file() and (index.parent / f"{table}.md").is_file()
    assert len(pd.read_csv(index.parent / "trials.csv")) == 2
    assert trials["settled"].all() and (trials["settled_step"] == 8).all()  # 4 minibatches an epoch: epoch 2
    epochs = pd.read_parquet(study / "epochs.parquet")
    assert list(epochs.sort_values(["trial_id", "epoch"])["settled"]) == [False, True] * 2
    assert '<p class="warning">' not in page  # every trial settled: no warning line


@pytest.mark.slow
def test_report_command_rebuilds_for_chosen_trial(real_study, capsys):
    study, _, _ = real_study
    tid = pd.read_parquet(study / "trials.parquet")["trial_id"].iloc[-1]
    out = study / "again"
    assert main(["report", str(study), "--out", str(out), "--trial", tid]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    assert [p.name for p in out.glob("table1_*.csv")] == [f"table1_{tid}.csv"]
    assert (out / "fig3_samples.png").is_file()
    assert_refs_exist(out / "index.html")
