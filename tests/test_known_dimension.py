"""Data with a known dimension (issue 28): the sprites generator, its data sets, the factor metrics of a real
trial, and the report's sections that compare the active count with k."""

import dataclasses
import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import vaesweep_cli

from analysis.known_dimension import summary_table
from analysis.report import build_report
from vaesweep import train_vae
from vaesweep.cli.main import main
from vaesweep.engine import data as data_module
from vaesweep.engine import sprites
from vaesweep.engine.data import load_dataset
from vaesweep.engine.factors import explained, rank_correlations
from vaesweep.engine.fid import Recipe, train_feature_net
from vaesweep.study.recorder import Recorder

TINY = ["--epochs", "2", "--max-train", "512", "--max-eval", "200", "--hidden", "64,32", "--threads", "1"]
# a two-evaluation window, any drift allowed: a tiny trial settles at its 2nd epoch (as tests/test_stop.py)
SETTLES = {"settle_patience": 2, "settle_min_steps": 0, "settle_law_tol": 100.0, "stop_when": "settled"}


def test_the_generator_gives_the_same_bytes_for_the_same_seed():
    a, fa, ya = sprites.make_sprites(3, n=3000)
    b, fb, yb = sprites.make_sprites(3, n=3000)
    assert a.tobytes() == b.tobytes() and fa.tobytes() == fb.tobytes() and (ya == yb).all()
    other, _, _ = sprites.make_sprites(3, n=3000, seed=sprites.SEED + 1)
    assert other.tobytes() != a.tobytes()
    assert a.dtype == np.uint8 and a.shape == (3000, 28, 28) and fa.shape == (3000, 3)


def test_factors_are_independent_and_cover_their_intervals():
    f = sprites.sample_factors(5, 70_000)
    for j, factor in enumerate(sprites.FACTORS):
        width = factor.high - factor.low
        assert factor.low <= f[:, j].min() < factor.low + 0.001 * width
        assert factor.high - 0.001 * width < f[:, j].max() <= factor.high
        counts, _ = np.histogram(f[:, j], bins=10, range=(factor.low, factor.high))
        assert counts.min() > 0.9 * 7_000  # uniform: every tenth of the interval holds its share
    corr = np.corrcoef(f.T)
    assert np.abs(corr - np.eye(5)).max() < 0.02  # 70,000 draws: independent ones correlate below ~0.01
    # sprites<k> varies the first k factors only, in the fixed order
    images, factors, _ = sprites.make_sprites(2, n=500)
    assert factors.shape == (500, 2) and np.allclose(sprites.render(factors.astype(np.float64)) * 255, images, atol=0.5)


@pytest.mark.parametrize("j", range(len(sprites.FACTORS)))
def test_each_factor_changes_the_images(j):
    factor = sprites.FACTORS[j]
    mids = np.array([[f.mid for f in sprites.FACTORS]] * 5)
    mids[:, j] = np.linspace(factor.low, factor.high, 5)
    images = sprites.render(mids)
    steps = np.abs(np.diff(images, axis=0)).sum(axis=(1, 2))
    assert (steps > 1.0).all()  # every quarter of the interval moves at least a pixel's worth of grey
    assert images.min() >= 0 and images.max() <= 1 and (images[:, 0, :] == 0).all()  # inside the frame


def test_a_sprites_data_set_is_built_once_into_the_cache_with_its_factors(tmp_path):
    data = load_dataset("sprites2", cache=tmp_path)
    assert data.train.shape == (60_000, 1, 28, 28) and data.eval.shape == (10_000, 1, 28, 28)
    assert data.factor_names == ("x", "y") and data.eval_factors.shape == (10_000, 2)
    images, factors, labels = sprites.make_sprites(2)
    assert np.array_equal((data.eval[:, 0].numpy() * 255).round().astype(np.uint8), images[60_000:])
    assert np.array_equal(data.train_factors.numpy(), factors[:60_000])
    assert int(data.train_labels.max()) == sprites.LABEL_BINS**2 - 1  # the FID-proxy's classes: a 3x3 grid
    files = list((tmp_path / "data").iterdir())
    assert [p.name for p in files] == [f"sprites2-v{sprites.VERSION}.npz"]
    stamp = files[0].stat().st_mtime_ns
    data_module._load_cached.cache_clear()  # a new process: loads the file
    assert load_dataset("sprites2", cache=tmp_path).content_hash == data.content_hash
    assert files[0].stat().st_mtime_ns == stamp  # loaded, not built again


def test_factor_metrics_find_a_variable_that_holds_a_factor():
    gen = np.random.default_rng(0)
    x, y = gen.random(2000), gen.random(2000)
    mu = torch.tensor(np.stack([np.exp(3 * x), gen.normal(0, 0.01, 2000), y + x, 2 * x], 1))
    factors = {"x": torch.tensor(x), "y": torch.tensor(y)}
    rho = rank_correlations(mu, factors)
    assert rho["factor_rho_x"][0] == pytest.approx(1.0)  # monotone, not linear: rank correlation 1
    assert abs(float(rho["factor_rho_x"][1])) < 0.1
    r2 = explained(mu, factors, torch.tensor([False, False, True, False]))
    assert 0.4 < r2["factor_r2_y"] < 0.6  # y + x explains half of y's variance
    assert explained(mu, factors, torch.tensor([False, False, True, True]))["factor_r2_y"] == pytest.approx(1)
    assert explained(mu, factors, torch.tensor([False] * 4)) == {"factor_r2_x": 0.0, "factor_r2_y": 0.0}


def test_a_small_real_trial_on_sprites2_runs_end_to_end(tmp_path):
    res = vaesweep_cli("train", "--dataset", "sprites2", "--latent-dim", "4", *TINY, "--no-fid", "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert {"factor_r2_x", "factor_r2_y"} <= set(out) and 0 <= out["factor_r2_x"] <= 1
    assert all({"factor_rho_x", "factor_rho_y"} <= set(r) for r in out["latents"])
    assert all(-1 <= r["factor_rho_y"] <= 1 for r in out["latents"])


def test_the_fid_proxy_trains_its_feature_network_on_the_sprites_classes(tmp_path):
    data = load_dataset("sprites2", cache=tmp_path)
    part = {"train": data.train[:2000], "train_labels": data.train_labels[:2000]}
    small = dataclasses.replace(data, **part, eval=data.eval[:1000], eval_labels=data.eval_labels[:1000])
    _, meta = train_feature_net(small, Recipe(epochs=2), progress=None)
    assert meta["n_classes"] == sprites.LABEL_BINS**2 and meta["test_accuracy"] > 0.5  # chance: 1 in 9


@pytest.mark.parametrize("name", ["sprites0", "sprites9", "sprites"])
def test_bad_sprites_names_get_one_line_and_exit_2(name, capsys):
    assert main(["train", "--dataset", name, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"unknown dataset '{name}'" in err and "sprites1..sprites5" in err


def _study(tmp_path, runs):
    """Real tiny trials fed through the study's recorder, as a study folder."""
    rec = Recorder(tmp_path / "kd", flush_every_s=1e9)
    for i, cfg in enumerate(runs):
        reports = []
        train_vae(cfg, report=reports.append)
        trial = SimpleNamespace(trial_id=f"k_{i:05d}", config=cfg, status="TERMINATED")
        for m in reports:
            rec.on_trial_result(0, [trial], trial, m)
        rec.on_trial_complete(0, [trial], trial)
    rec.tables()
    return tmp_path / "kd"


def test_the_report_shows_active_variables_against_k_and_which_holds_which_factor(tmp_path, tiny):
    runs = [
        {**tiny, **SETTLES, "dataset": f"sprites{k}", "seed": s, "epochs": 3, "latent_dim": 16}
        for k in (1, 2)
        for s in (0, 1)
    ]
    runs.append({**runs[-1], "seed": 2, "settle_law_tol": 1e-12})  # the residual always drifts: not settled
    index = build_report(_study(tmp_path, runs))
    page, out = index.read_text(), index.parent
    assert "Active variables against the known dimension" in page and "Which variable holds which factor" in page
    assert (out / "known_dimension.png").exists() and (out / "factors.png").exists()
    table = pd.read_csv(out / "known_dimension.csv")
    assert list(table["k"]) == [1, 2] and list(table["settled_seeds"]) == ["2/2", "2/3"]
    trials = pd.read_parquet(tmp_path / "kd" / "trials.parquet").set_index("trial_id")
    for k, row in zip((1, 2), table.itertuples()):
        counted = trials[trials["dataset"].eq(f"sprites{k}") & trials["settled"].eq(True)]
        assert row.n_active_mean == counted["n_active"].mean()
    factors = pd.read_csv(out / "factors.csv")
    assert len(factors) == 4 and {"r2_x", "best_var_x", "best_rho_x", "r2_y"} <= set(factors.columns)
    assert factors.loc[factors["k"] == 1, "r2_y"].isna().all()  # sprites1 has no y factor
    assert "1 of 5 trials not settled" in page
    assert "The paper, side by side" not in page  # Table 1's digits do not compare with sprites


def test_the_verdict_against_k_counts_settled_seeds_only():
    rows = [(1, 0, 1, True), (1, 1, 1, True), (2, 0, 3, True), (2, 1, 3, True), (3, 0, 2, True), (3, 1, 4, True)]
    rows += [(4, 0, 4, True), (4, 1, 9, False), (5, 0, 5, False)]
    df = pd.DataFrame(rows, columns=["k", "seed", "n_active", "settled"]).assign(
        arch="dense", latent_dim=16, setting="", kl_working=True, settled_step=100, factors_held=1
    )
    df["lam_level"] = pd.Categorical(["λ=1"] * len(df), categories=["λ=1"], ordered=True)
    table = summary_table(df).set_index("k")
    assert list(table["n_active vs k"]) == ["= k", "over", "mixed", "= k", "no settled trial"]
    assert table.loc[4, "settled_seeds"] == "1/2" and table.loc[4, "n_active_max"] == 4
