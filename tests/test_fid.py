"""The FID-proxy (vaesweep/engine/fid.py): its feature network and cache, the distance's behaviour on
known image sets, the per-trial scores and the ``fid`` command.

The mnist5k feature network is trained once per test session into the session's tmp cache
(the same folder the conftest points VAESWEEP_CACHE at), then reused by every test here.
"""

import json
import math
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ROOT, recorded, vaesweep_cli
from torchvision.transforms.functional import gaussian_blur

from analysis.report import build_report
from vaesweep import DataError, load_dataset, train_vae
from vaesweep.cli.main import build_parser, main
from vaesweep.engine import fid

N = 500  # images per set in the distance tests


@pytest.fixture(scope="module")
def data():
    return load_dataset("mnist5k")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.getbasetemp() / "cache"  # = $VAESWEEP_CACHE of conftest's fixture


@pytest.fixture(scope="module")
def trained(data, cache):
    torch.set_num_threads(1)
    return fid.feature_net(data, cache)


@pytest.fixture(scope="module")
def scorer(data, trained):
    return fid.FidScorer(trained.net, data.eval[:N])


@pytest.fixture
def fid_trial():
    """A tiny trial with the FID-proxy on (2 epochs, 300 images per score)."""
    return {
        "epochs": 2,
        "max_train": 512,
        "max_eval": 200,
        "hidden": [64, 32],
        "latent_dim": 4,
        "batch_size": 64,
        "threads": 1,
        "fid": True,
        "fid_samples": 300,
    }


# --- the feature network and its cache -----------------------------------------------------------


def test_feature_net_is_accurate_and_cached_with_its_accuracy(data, trained, cache):
    assert trained.path.parent == cache and trained.path.is_file()
    assert data.content_hash in trained.path.name
    assert trained.test_accuracy > 0.97  # measured 98.3% on the 1,000 eval digits
    assert trained.test_accuracy == pytest.approx(fid.accuracy(trained.net, data.eval, data.eval_labels))
    assert trained.meta["n_train"] == 4000 and trained.meta["n_test"] == 1000
    assert not trained.net.training


def test_cache_is_reused_not_retrained(data, trained, cache, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("the cached feature network was retrained")

    monkeypatch.setattr(fid, "train_feature_net", no_training)
    mtime = trained.path.stat().st_mtime_ns
    again = fid.feature_net(data, cache)
    assert again.path == trained.path and trained.path.stat().st_mtime_ns == mtime
    for a, b in zip(again.net.state_dict().values(), trained.net.state_dict().values()):
        assert torch.equal(a, b)
    monkeypatch.setenv("VAESWEEP_CACHE", str(cache))  # the env setting finds the same file
    assert fid.feature_net(data).path == trained.path


def test_unwritable_cache_is_one_clear_error(data, tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(DataError, match=r"cache_dir '.*a_file/cache' cannot be created .*set cache_dir or "):
        fid.feature_net(data, tmp_path / "a_file" / "cache")


def test_concurrent_processes_train_once(data, tmp_path):
    """Three processes ask for an uncached network at once: one trains, the others wait and load."""
    images, labels = (data.train[:500] * 255).round().byte().numpy(), data.train_labels[:500].numpy()
    np.savez(tmp_path / "small.npz", x=images, y=labels)
    script = textwrap.dedent(f"""
        import pathlib, sys, time, torch
        from vaesweep import load_dataset
        from vaesweep.engine import fid
        torch.set_num_threads(1)
        data = load_dataset("npz:{tmp_path / "small.npz"}")
        (pathlib.Path("{tmp_path}") / f"ready{{sys.argv[1]}}").touch()
        while len(list(pathlib.Path("{tmp_path}").glob("ready*"))) < 3:  # start together
            time.sleep(0.01)
        lines = []
        net = fid.feature_net(data, "{tmp_path / "cache"}", fid.Recipe(epochs=3), progress=lines.append)
        print("TRAINED" if lines else "LOADED", net.test_accuracy)
    """)
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(i)], cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for i in range(3)
    ]
    outputs = [p.communicate(timeout=120)[0].split() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert sorted(o[0] for o in outputs) == ["LOADED", "LOADED", "TRAINED"]
    assert len({o[1] for o in outputs}) == 1  # all three hold the same network
    assert [f.name for f in (tmp_path / "cache").iterdir() if f.suffix == ".tmp"] == []


# --- the distance on known image sets -------------------------------------------------------------


def test_real_held_out_is_close_and_noise_is_far(data, scorer):
    real = scorer.score(data.train[:N])
    noise = scorer.score(torch.rand(N, *data.shape, generator=torch.Generator().manual_seed(0)))
    assert 0 < real < 10
    assert noise > 50 * real


def test_score_grows_with_blur(data, scorer):
    sigmas = [0.5, 1.0, 1.5, 2.0, 3.0]
    scores = [scorer.score(data.train[:N])]
    scores += [scorer.score(gaussian_blur(data.train[:N], 2 * math.ceil(3 * s) + 1, s)) for s in sigmas]
    assert all(a < b for a, b in zip(scores, scores[1:])), scores


def test_same_images_same_score(data, scorer, trained):
    fake = data.train[N : 2 * N]
    assert scorer.score(fake) == scorer.score(fake)
    assert fid.FidScorer(trained.net, data.eval[:N]).score(fake) == scorer.score(fake)


# --- per-trial scores -----------------------------------------------------------------------------


def test_zeroed_equals_prior_when_all_active_and_collapses_when_none(scorer, fid_trial):
    model = train_vae({**fid_trial, "fid": False}).model
    all_on = fid.generation_scores(model, scorer, [True] * 4, seed=0)
    assert all_on["fid_zeroed"] == all_on["fid_prior"] and all_on["fid_zeroed_pixel_change"] == 0.0
    assert set(all_on) == {"fid_prior", "fid_recon", "fid_zeroed", "fid_zeroed_pixel_change", "fid_seconds"}
    all_off = fid.generation_scores(model, scorer, [False] * 4, seed=0)  # one image repeated N times
    assert all_off["fid_prior"] == all_on["fid_prior"] and all_off["fid_zeroed"] > all_on["fid_prior"]
    assert 0.01 < all_off["fid_zeroed_pixel_change"] < 1  # every sample replaced by the decoded origin


def test_trial_reports_scores_at_the_end_deterministically(fid_trial):
    reports = []
    a = train_vae(fid_trial, reports.append)
    assert "fid_prior" not in reports[0] and "fid_prior" in reports[-1]
    scores = {k: reports[-1][k] for k in ("fid_prior", "fid_recon", "fid_zeroed", "fid_zeroed_pixel_change")}
    assert all(math.isfinite(v) and v >= 0 for v in scores.values())
    assert scores["fid_prior"] > 0 and scores["fid_zeroed_pixel_change"] < 1
    assert scores["fid_recon"] < scores["fid_prior"]  # reconstructions beat random generations
    assert reports[-1]["fid_net_accuracy"] > 0.97 and reports[-1]["fid_seconds"] > 0
    assert {k: a.summary[k] for k in scores} == scores  # the result's summary carries them too
    assert "fid_seconds" not in a.summary  # a timing: it would break same-seed-same-summary
    b = train_vae(fid_trial)
    assert {k: b.summary[k] for k in scores} == scores  # fixed seed: the same scores
    c = train_vae({**fid_trial, "seed": 1})
    assert c.summary["fid_prior"] != scores["fid_prior"]


def test_pixel_change_reaches_the_tables_and_the_papers_section(fid_trial, tmp_path):
    """A real tiny trial with the paper's settings (latent 16, lambda 1): fid_zeroed_pixel_change goes
    through the Recorder into the epochs and trials tables, and the report compares it with Fig. 3."""
    # a two-evaluation window with no span and every variable counted active: the trial settles at its
    # second epoch (the section reads settled seeds only; a 2-epoch model's active set still moves)
    cfg = {
        **fid_trial,
        "latent_dim": 16,
        "lam": 1.0,
        "settle_patience": 2,
        "settle_min_steps": 0,
        "settle_law_tol": 100.0,
        "active_threshold": 1e-6,
    }
    reports = []
    result = train_vae(cfg, reports.append)
    change = result.summary["fid_zeroed_pixel_change"]
    assert change == reports[-1]["fid_zeroed_pixel_change"] and 0 <= change < 1
    assert result.summary["settled"]
    tables = recorded(tmp_path, cfg, reports)
    assert tables.trials["fid_zeroed_pixel_change"].iloc[0] == change
    assert tables.epochs["fid_zeroed_pixel_change"].dropna().tolist() == [change]  # the FID epoch only
    index = build_report(tmp_path)
    assert 'id="paper"' in index.read_text()
    side = pd.read_csv(index.parent / "paper_side_by_side.csv").set_index("quantity")
    row = side.loc["mean pixel change from zeroing the inactive variables (images in [0, 1])"]
    assert row["mean"] == pytest.approx(change) and row["seeds"] == 1
    assert row["reading"].endswith("only 1 seed, fewer than 3.")
    assert row["computed on"] == "300 prior samples against the first 300 eval images"


def test_fid_every_does_not_change_training(fid_trial):
    with_fid, without = [], []
    train_vae({**fid_trial, "fid_every": 1}, with_fid.append)
    train_vae({**fid_trial, "fid": False}, without.append)
    assert all("fid_prior" in m for m in with_fid) and not any("fid_prior" in m for m in without)
    assert [m["train_loss"] for m in with_fid] == [m["train_loss"] for m in without]


def test_unlabeled_data_warns_and_skips(data, tmp_path, fid_trial):
    np.savez(tmp_path / "nolabels.npz", x=(data.train[:500] * 255).round().byte().numpy())
    with pytest.warns(UserWarning, match="no labels"):
        result = train_vae({**fid_trial, "dataset": f"npz:{tmp_path / 'nolabels.npz'}", "max_eval": None})
    assert not any(k.startswith("fid_") for k in result.summary)


# --- the fid command ------------------------------------------------------------------------------


def test_cli_npz_against_eval(data, scorer, tmp_path):
    np.savez(tmp_path / "real.npz", x=(data.train[:N, 0] * 255).round().byte().numpy())
    out = vaesweep_cli("fid", tmp_path / "real.npz", "--n", N, "--threads", 1, "--json")
    assert out.returncode == 0, out.stderr
    out = json.loads(out.stdout)
    assert out["n_a"] == out["n_b"] == N and out["fid_net_accuracy"] > 0.97
    expected = scorer.score(torch.from_numpy(np.load(tmp_path / "real.npz")["x"][:, None] / 255.0).float())
    assert out["fid"] == pytest.approx(expected, rel=1e-5)


def test_cli_errors_are_one_line(data, tmp_path, capsys):
    missing = tmp_path / "missing.npz"
    assert main(["fid", str(missing)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vaesweep: error: image file '{missing}' not found; give an existing .npz file"
    ]
    np.savez(tmp_path / "big.npz", x=np.zeros((10, 32, 32), np.uint8))
    assert main(["fid", str(tmp_path / "big.npz")]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vaesweep: error: '{tmp_path / 'big.npz'}' holds 1x32x32 images but the feature network of 'mnist5k' "
        "takes 1x28x28; pick the matching --dataset"
    ]
    assert main(["fid", "nonsense"]) == 2
    assert "is not an .npz file, a trial checkpoint" in capsys.readouterr().err
    assert build_parser().parse_args(["train", "--no-fid"]).fid is False


def test_cli_trial_scores_match_the_trial(fid_trial, tmp_path, capsys):
    args = [
        f"--{k.replace('_', '-')}={','.join(map(str, v)) if isinstance(v, list) else v}"
        for k, v in fid_trial.items()
        if k != "fid"
    ]
    assert main(["train", *args, "--json", "--out", str(tmp_path / "run")]) == 0
    in_trial = json.loads(capsys.readouterr().out)
    assert main(["fid", str(tmp_path / "run"), "--n", str(fid_trial["fid_samples"]), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    for k in ("fid_prior", "fid_recon", "fid_zeroed"):
        assert scores[k] == in_trial[k]
