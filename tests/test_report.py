"""The analysis report: charts from a study's tables, the onset of sparsity, the HTML page."""

from __future__ import annotations

import importlib.util
import itertools
import math
import os
import shutil
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from analysis.capacity import onset_of_sparsity
from analysis.design import frame
from analysis.latents import table1
from analysis.law import law_heatmap
from analysis.paper import paper_chart
from analysis.report import build_report, choose_trials, study_charts, to_markdown
from vaesweep.cli.main import main
from vaesweep.study.tables import load_study

ALL_CHARTS = (
    "capacity",
    "information",
    "law_heatmap",
    "table1",
    "fig2_var_mu",
    "fid",
    "fig3_samples",
    "traversals",
    "gain_vs_kl",
)
NEEDS_CHECKPOINTS = ("fig3_samples", "traversals")


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


def synthetic_study(
    path: Path,
    archs=("dense", "conv"),
    dims=(2, 4, 8, 16),
    lams=(0.5, 2.0),
    seeds=(0, 1),
    fid=True,
    lambda_star=True,
    settled=True,
    moving=None,
) -> Path:
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
        row = {
            "trial_id": tid,
            "arch": arch,
            "latent_dim": d,
            "lam": lam,
            "seed": seed,
            "epochs": 3,
            "hidden": [32, 16],
            "status": "done",
            "error": None,
            "n_active": n_active,
            "n_inactive": d - n_active,
            "law_residual_max": residual * (1 + 0.1 * seed),
            "mean_mu_abs_max": 0.05,
            "recon": 100.0 - n_active,
            "kl": 2.0 * n_active,
            "elbo": -100 - n_active,
            "nll_iw": 99 + n_active,
            "mi": min(1.5 * n_active, math.log(1000)),
            "mi_log_n": math.log(1000),
            "kl_working": lam == 2.0,
            "epochs_done": 3,
            "time_total": 1.0,
        }
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
                r = {
                    "trial_id": tid,
                    "epoch": epoch,
                    "latent": j,
                    "mean_mu": 0.0,
                    "var_mu": (0.3 * epoch) if active else 1e-4,
                    "mean_sigma2": 0.05 if active else 0.98,
                    "kl": 2.0 if active else 0.001,
                    "recon_gain": 5.0 + j if active else 0.0,
                    "mi_i": 1.5 if active else 0.0,
                    "active": active,
                }
                r["law"] = r["var_mu"] + r["mean_sigma2"]
                history.append(r)
                if epoch == 3:
                    latents.append(r)
    trials.append(
        {
            "trial_id": "syn_failed",
            "arch": "dense",
            "latent_dim": 4,
            "lam": 0.5,
            "seed": 9,
            "epochs": 3,
            "hidden": [32, 16],
            "status": "failed",
            "error": "loss became nan",
        }
    )
    path.mkdir(parents=True, exist_ok=True)
    for name, rows in (("trials", trials), ("latents", latents), ("latent_history", history), ("epochs", epochs)):
        pd.DataFrame(rows).to_parquet(path / f"{name}.parquet", index=False)
    if lambda_star:
        pd.DataFrame(
            [{"arch": a, "latent_dim": d, "lam_star": 0.7 + 0.1 * k} for a in archs for k, d in enumerate(dims)]
        ).to_parquet(path / "lambda_star.parquet", index=False)
    (path / "study.yaml").write_text(yaml.safe_dump({"name": path.name, "metric": "elbo", "mode": "max"}))
    return path


# --- the onset of sparsity ------------------------------------------------------------------------


def test_onset_of_sparsity_known_answers():
    rows = []
    lines = {  # group -> {d: n_active of seed 0, seed 1}
        "clean": {2: (2, 2), 4: (4, 4), 8: (8, 8), 16: (9, 10), 32: (9, 9)},  # onset 16
        "half_seed": {2: (2, 2), 4: (3, 4), 8: (7, 6), 16: (8, 8), 32: (8, 9)},  # d=4 mean 0.5 inactive -> 8
        "blip": {2: (2, 2), 4: (3, 3), 8: (8, 8), 16: (12, 12), 32: (12, 12)},  # d=4 alone collapses -> 16
        "never": {2: (2, 2), 4: (4, 4), 8: (8, 8), 16: (16, 16), 32: (32, 32)},  # no onset
    }
    for group, per_d in lines.items():
        for d, actives in per_d.items():
            rows += [
                {"group": group, "latent_dim": d, "seed": s, "n_active": a, "n_inactive": d - a}
                for s, a in enumerate(actives)
            ]
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
        if key in NEEDS_CHECKPOINTS:  # no checkpoints in a synthetic study: a note, not an error
            assert not (index.parent / f"{key}.png").exists()
            assert "Sample grids need the trained models: no usable checkpoint under" in index.read_text()
            assert "Latent traversals need the trained models: no usable checkpoint for" in index.read_text()
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
    stars = pd.DataFrame(
        {
            "arch": ["dense", "dense", "dense", "conv", "conv"],
            "latent_dim": [2, 2, 16, 2, 4],
            "seed": [0, 1, 0, 0, 0],
            "lam_star": [0.49, 1.0, 4.0, 2.0, np.nan],
            "lam_star_trial": ["a", "b", "c", "d", None],
        }
    )  # searcher.lambda_star's columns
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
    study = synthetic_study(
        tmp_path / "one", archs=("dense",), dims=(16,), lams=(2.0,), seeds=(0,), fid=False, lambda_star=False
    )
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
    pd.DataFrame(
        [{"trial_id": "a_00000", "latent_dim": 4, "lam": 1.0, "seed": 0, "status": "running", "error": None}]
    ).to_parquet(study / "trials.parquet")
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
    assert md.splitlines() == [
        "| latent | var_mu | active |",
        "| --- | --- | --- |",
        "| 0 | 1.235 | yes |",
        "| 1 | 1e-05 | **no** |",
    ]


def test_report_cli_errors(tmp_path, capsys):
    assert main(["report", str(tmp_path)]) == 2
    assert "holds no study results" in capsys.readouterr().err
    study = synthetic_study(tmp_path / "s", archs=("dense",), dims=(4,), lams=(2.0,), seeds=(0,), fid=False)
    assert main(["report", str(study), "--trial", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vaesweep: error: --trial nope: no such trial") and "\n" not in err


def test_run_survives_a_failing_report(tmp_path, monkeypatch, capsys):
    import vaesweep.cli.study

    study = synthetic_study(tmp_path / "s", archs=("dense",), dims=(4,), lams=(2.0,), seeds=(0,), fid=False)
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\n")

    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(vaesweep.cli.study, "run_study", lambda *a, **k: study)
    monkeypatch.setattr(vaesweep.cli.study, "report_lines", broken)
    assert main(["run", str(spec)]) == 0
    out = capsys.readouterr().out
    assert "report: not written (RuntimeError: disk full)" in out
    assert "1/2 done, 0 running, 1 failed" in out and "failed syn_failed: loss became nan" in out  # the answers
    assert "  dense λ=2: works at d=4" in out  # still printed


# --- a report from a real (tiny) Ray study --------------------------------------------------------


@pytest.mark.slow
def test_run_writes_a_report_with_every_applicable_chart(real_study):
    study, rc, printed = real_study.study, real_study.returncode, real_study.printed
    assert rc == 0, printed
    index = study / "report" / "index.html"
    assert f"report: {index}" in printed
    refs = assert_refs_exist(index)
    trials = load_study(study).trials
    assert trials[["fid_prior", "fid_recon", "fid_zeroed"]].notna().all().all()  # the study set fid: true
    for key in ALL_CHARTS:
        assert f"{key}.png" in refs, f"chart {key} missing: {index.read_text()[:2000]}"
        png = index.parent / f"{key}.png"
        assert png.stat().st_size > 10_000  # a drawn figure, not an empty canvas
    page = index.read_text()
    assert "no FID-proxy values" not in page
    assert page.count('class="reading"') == len(ALL_CHARTS)  # one reading under every chart
    assert "(from the minibatch trace)" in page  # the study set track_every: Fig. 2 uses the trace
    for table in ("trials", "onset", "law_residual"):
        assert (index.parent / f"{table}.csv").is_file() and (index.parent / f"{table}.md").is_file()
    assert len(pd.read_csv(index.parent / "trials.csv")) == 2
    assert trials["settled"].all() and (trials["settled_step"] == 8).all()  # 4 minibatches an epoch: epoch 2
    epochs = load_study(study).epochs
    assert list(epochs.sort_values(["trial_id", "epoch"])["settled"]) == [False, True] * 2
    assert '<p class="warning">' not in page  # every trial settled: no warning line


@pytest.mark.slow
def test_report_command_rebuilds_for_chosen_trial(real_study, capsys):
    study = real_study.study
    tid = load_study(study).trials["trial_id"].iloc[-1]
    out = study / "again"
    assert main(["report", str(study), "--out", str(out), "--trial", tid]) == 0
    assert f"report: {out / 'index.html'}" in capsys.readouterr().out
    assert [p.name for p in out.glob("table1_*.csv")] == [f"table1_{tid}.csv"]
    assert (out / "fig3_samples.png").is_file()
    assert_refs_exist(out / "index.html")


# --- the paper, side by side ------------------------------------------------------------------------


def paper_study(path: Path, dense_seeds=(0, 1, 2), conv_seeds=(0, 1, 2), settled=None, fid=True) -> Path:
    """Trials with the paper's settings (latent 16, lambda 1) and known numbers, plus one unrelated trial.

    Dense seed s: 8 + s active variables, active laws 0.97 + 0.01 s .. 1.02 + 0.01 s, inactive mean
    sigma^2 0.95 .. 0.99, inactive Var[mu] up to (s + 1) 1e-4, fid_prior 40 + s, fid_zeroed 0.1 above it,
    pixel change 0.001 (s + 1). Conv seed s: 12 + s active. ``settled``: the settled column, by trial_id."""
    trials, latents, epochs = [], [], []
    runs = [("dense", s, 8 + s) for s in dense_seeds] + [("conv", s, 12 + s) for s in conv_seeds]
    for i, (arch, seed, n_active) in enumerate(runs):
        tid = f"p_{i:05d}"
        row = {
            "trial_id": tid,
            "arch": arch,
            "latent_dim": 16,
            "lam": 1.0,
            "seed": seed,
            "epochs": 2,
            "max_eval": 500,
            "fid_samples": 300,
            "status": "done",
            "error": None,
            "n_active": n_active,
            "n_inactive": 16 - n_active,
            "law_residual_max": 0.05,
            "mean_mu_abs_max": 0.01,
            "recon": 90.0,
            "kl": 20.0,
            "elbo": -110.0 - seed,
            "kl_working": True,
        }
        if fid:
            row.update(
                fid_prior=40.0 + seed,
                fid_recon=10.0,
                fid_zeroed=40.1 + seed,
                fid_zeroed_pixel_change=0.001 * (seed + 1),
            )
        trials.append(row)
        epochs += [{"trial_id": tid, "epoch": e, "step": 32 * e} for e in (1, 2)]
        n_in = 16 - n_active
        for j in range(16):
            active = j < n_active
            k = j if active else j - n_active
            var_mu = 0.9 if active else (seed + 1) * 1e-4 * k / max(n_in - 1, 1)
            if active:
                sigma2 = 0.07 + 0.01 * seed + 0.05 * k / (n_active - 1)
            else:
                sigma2 = 0.95 + 0.04 * k / max(n_in - 1, 1)
            latents.append(
                {
                    "trial_id": tid,
                    "epoch": 2,
                    "latent": j,
                    "mean_mu": 0.0,
                    "var_mu": var_mu,
                    "mean_sigma2": sigma2,
                    "law": var_mu + sigma2,
                    "kl": 1.0,
                    "recon_gain": 1.0,
                    "active": active,
                }
            )
    trials.append(
        {
            "trial_id": "p_other",
            "arch": "dense",
            "latent_dim": 8,
            "lam": 2.0,
            "seed": 0,
            "epochs": 2,
            "status": "done",
            "error": None,
            "n_active": 5,
            "n_inactive": 3,
            "law_residual_max": 0.05,
            "mean_mu_abs_max": 0.01,
            "recon": 95.0,
            "kl": 10.0,
            "elbo": -105.0,
            "kl_working": True,
        }
    )
    df = pd.DataFrame(trials)
    if settled is not None:
        df["settled"] = df["trial_id"].map(settled).fillna(True).astype(bool)
    path.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path / "trials.parquet", index=False)
    pd.DataFrame(latents).to_parquet(path / "latents.parquet", index=False)
    pd.DataFrame(epochs).to_parquet(path / "epochs.parquet", index=False)
    return path


def paper_table(index: Path) -> pd.DataFrame:
    table = pd.read_csv(index.parent / "paper_side_by_side.csv", dtype={"minibatches": str})
    return table.set_index(["arch", "quantity"])


def test_paper_section_puts_the_papers_numbers_beside_the_seeds(tmp_path):
    index = build_report(paper_study(tmp_path / "paper"))
    page = index.read_text()
    assert page.index('id="paper"') < page.index('id="capacity"')  # first, before the other charts
    assert (index.parent / "paper.png").is_file()
    t = paper_table(index)
    assert list(t.columns[:2]) == ["in the paper", "paper value"]
    dense = t.loc["dense"]
    active = dense.loc["active variables (of 16)"]
    numbers = [active[c] for c in ("paper value", "mean", "sd", "min", "max", "seeds")]
    assert numbers == ["8 of 16", 9.0, 1.0, 8, 10, 3]
    assert active["this study"] == "9 ± 1" and active["reading"].startswith("agrees: the paper's 8 of 16")
    assert active["data set"] == "mnist5k (4,000 train images)" and active["minibatches"] == "64"
    assert active["computed on"] == "eval split, 500 images"
    low = dense.loc["lowest law (Var[μ] + mean σ²) of an active variable"]
    assert low["paper value"] == "0.980" and low["mean"] == pytest.approx(0.98)
    assert (low["min"], low["max"]) == (pytest.approx(0.97), pytest.approx(0.99))
    high = dense.loc["highest law of an active variable"]
    assert high["paper value"] == "1.033" and high["mean"] == pytest.approx(1.03)
    s2 = dense.loc["lowest mean σ² of an inactive variable"]
    assert s2["paper value"] == "0.960" and s2["mean"] == pytest.approx(0.95) and s2["sd"] == pytest.approx(0)
    assert dense.loc["highest mean σ² of an inactive variable", "paper value"] == "0.999"
    var_mu = dense.loc["largest Var[μ] of an inactive variable"]
    assert var_mu["paper value"] == "0.00016" and var_mu["mean"] == pytest.approx(2e-4)
    assert var_mu["reading"].startswith("agrees") and "within a factor of 10" in var_mu["reading"]
    gap = dense.loc["FID-proxy change from zeroing the inactive variables (fid_zeroed − fid_prior)"]
    assert gap["mean"] == pytest.approx(0.1) and gap["paper value"] == "≈ 0 (indistinguishable)"
    assert "0.2% of fid_prior 41" in gap["reading"] and gap["reading"].startswith("agrees")
    assert gap["computed on"] == "300 prior samples against the first 300 eval images"
    pixel = dense.loc["mean pixel change from zeroing the inactive variables (images in [0, 1])"]
    assert (pixel["mean"], pixel["min"], pixel["max"]) == (pytest.approx(0.002), 0.001, 0.003)
    conv = t.loc[("conv", "active variables (of 16)")]
    assert (conv["in the paper"], conv["paper value"], conv["mean"], conv["min"], conv["max"]) == (
        "Sec. 3.1, Fig. 4",
        "13 of 16",
        13.0,
        12,
        14,
    )
    seeds = pd.read_csv(index.parent / "paper_seeds.csv")
    assert "p_other" not in set(seeds["trial_id"]) and len(seeds) == 6  # the unrelated trial is left out
    assert "settled status unknown" in page and "60,000 digits" in page
    assert "trained the dense trials on mnist5k (4,000 train images) for 64 minibatches of 128" in page
    assert "Fewer than 3 seeds" not in page


def test_paper_section_counts_settled_seeds_and_says_when_few(tmp_path):
    study = load_study(
        paper_study(tmp_path / "few", dense_seeds=(0, 1), conv_seeds=(0, 1, 2), settled={"p_00002": False}, fid=False)
    )
    chart = paper_chart(study.trials, study.latents, study.epochs)  # from Python, on the DataFrames
    t = chart.tables["paper_side_by_side"].set_index(["arch", "quantity"])
    dense = t.loc[("dense", "active variables (of 16)")]
    assert dense["seeds"] == 2 and dense["reading"].endswith("only 2 seeds, fewer than 3.")
    conv = t.loc[("conv", "active variables (of 16)")]
    assert (conv["seeds"], conv["min"], conv["max"]) == (2, 13, 14)  # conv seed 0 (p_00002) left out
    assert "conv (init torch): 2 seeds counted, 1 of 3 seeds left out: not settled" in chart.reading
    assert "Fewer than 3 seeds for dense (init torch) and conv (init torch)" in chart.reading
    pixel = t.loc[("dense", "mean pixel change from zeroing the inactive variables (images in [0, 1])")]
    assert pixel["seeds"] == 0 and pixel["reading"].startswith("Not measured")
    none = study.trials.assign(settled=False)  # every seed unsettled: the section says so, draws nothing
    chart = paper_chart(none, study.latents, study.epochs)
    assert chart.skipped and "dense (init torch): 0 seeds counted, 2 of 2 seeds left out: not settled" in chart.reading
    warm = study.trials.assign(warmup_steps=100)  # a remedy of Sec. 6.1 is not the paper's plain VAE
    assert paper_chart(warm, study.latents, study.epochs).reading.startswith("No finished trial has the")


def test_paper_section_absent_without_matching_trials(synthetic_report):
    _, index = synthetic_report  # latent 2..16 with lambda 0.5 and 2: none has the paper's settings
    assert 'id="paper"' not in index.read_text() and not (index.parent / "paper_side_by_side.csv").exists()


# --- the report in a real browser ----------------------------------------------------------------

# Chromium without a desktop: no sandbox (CI runs as root), no GPU, no network of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium() -> str:
    """The operating system's Chromium, driven by Playwright; skipped where either is missing,
    except in CI (CI=true), which installs both (.ci/run) and so must fail without them."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    playwright = importlib.util.find_spec("playwright")
    missing = [name for name, ok in (("chromium", path), ("playwright", playwright)) if not ok]
    if missing:
        why = f"{' and '.join(missing)} not installed (apt-get install chromium; pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(why)
        pytest.skip(why)
    return path


@pytest.mark.slow
def test_report_in_a_real_browser(real_study):
    """index.html of the real study in headless Chromium: every image decodes, no console errors,
    every in-page link lands on a section."""
    from playwright.sync_api import sync_playwright

    executable = chromium()
    index = real_study.study / "report" / "index.html"
    assert real_study.returncode == 0, real_study.printed
    errors = []
    with sync_playwright() as pw, tempfile.TemporaryDirectory() as profile:
        browser = pw.chromium.launch_persistent_context(
            profile, executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(index.as_uri(), wait_until="load")
            images = page.evaluate("[...document.images].map(i => [i.getAttribute('src'), i.naturalWidth])")
            anchors = page.evaluate(
                "[...document.querySelectorAll('a[href^=\"#\"]')].map(a => "
                "[a.getAttribute('href'), !!document.getElementById(a.hash.slice(1))])"
            )
            title = page.title()
        finally:
            browser.close()
    assert "tiny" in title
    assert {f"{k}.png" for k in ALL_CHARTS} <= {src for src, _ in images}
    assert all(width > 0 for _, width in images), images  # every image decoded
    assert anchors and all(ok for _, ok in anchors), anchors
    assert not errors, errors


def test_a_study_varying_init_compares_like_with_like(tmp_path):
    """Issue 23: trials of two inits are two groups in the paper section, each with its seeds counted, and the
    per-trial charts draw one trial of each init; Table 1's titles name the init."""
    path = paper_study(tmp_path / "init", dense_seeds=(0, 1, 2, 3, 4, 5), conv_seeds=())
    trials = pd.read_parquet(path / "trials.parquet")
    trials["init"] = ["keras" if s >= 3 else "torch" for s in trials["seed"]]
    trials.to_parquet(path / "trials.parquet", index=False)
    charts, facts = study_charts(path)
    paper = next(c for c in charts if c.key == "paper")
    t = paper.tables["paper_side_by_side"]
    active = t[t["quantity"] == "active variables (of 16)"].set_index("training choices")
    assert active["seeds"].to_dict() == {"init torch": 3, "init keras": 3}
    assert active["mean"].to_dict() == {"init torch": 9.0, "init keras": 12.0}  # 8..10 and 11..13 active
    assert active.loc["init torch", "reading"].startswith("agrees") and active.loc["init keras", "reading"].startswith(
        "differs"
    )
    assert "dense (init torch): 3 seeds" in paper.reading and "dense (init keras): 3 seeds" in paper.reading
    chosen = facts["chosen"]
    assert any("init torch" in c for c in chosen) and any("init keras" in c for c in chosen)
    assert "init" in frame(trials).settings  # the onset of sparsity and the law heatmap split by it too
