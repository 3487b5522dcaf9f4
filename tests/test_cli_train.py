"""``python -m vaesweep train``: the Table 1 view, --json, --out, and one-line errors."""

import json

import numpy as np
import pytest
from conftest import vaesweep_cli

from vaesweep.cli.main import main

TINY = ["--epochs", "2", "--max-train", "512", "--max-eval", "200", "--hidden", "64,32", "--threads", "1"]


def test_train_json_has_latents_and_summary(tmp_path):
    res = vaesweep_cli(
        "train", "--arch", "dense", "--latent-dim", "5", "--lam", "1", *TINY, "--json", "--out", tmp_path / "out"
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert len(out["latents"]) == 5
    assert out["n_active"] + out["n_inactive"] == 5
    assert {"var_mu", "mean_sigma2", "law", "kl", "recon_gain", "active"} <= set(out["latents"][0])
    assert "epoch    2/2" in res.stderr  # progress while it trains
    assert {p.name for p in (tmp_path / "out").iterdir()} >= {"model.pt", "samples.png", "result.json"}


def test_train_prints_table1_view():
    res = vaesweep_cli("train", "--latent-dim", "3", *TINY)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["no.", "var_mu", "mean_sigma2", "law", "kl", "recon_gain", "mi_i", "active"]
    assert len([line for line in lines[1:4] if line.split()[0].isdigit()]) == 3
    assert any("kl_working" in line for line in lines)


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--lam", "-1"], "--lam"),
        (["--latent-dim", "many"], "--latent-dim"),
        (["--arch", "resnet"], "--arch"),
        (["--dataset", "svhn"], "svhn"),
        (["--dataset", "mnist"], "data fetch mnist"),  # conftest's empty cache
        (["--bogus"], "--bogus"),
    ],
)
def test_bad_arguments_one_line_exit_2(args, needle, capsys):
    assert main(["train", *args, *TINY]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("vaesweep: error:") and needle in err


def test_too_small_npz_one_line_exit_2(tmp_path, capsys):
    np.savez(tmp_path / "three.npz", x=np.zeros((3, 28, 28), np.uint8))
    assert main(["train", "--dataset", f"npz:{tmp_path / 'three.npz'}", *TINY]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vaesweep: error: dataset 'npz:{tmp_path / 'three.npz'}' has 2 training and 1 eval images; "
        "need at least 128 and 100 (an npz is split 80%/20%: give at least 500 images)"
    ]
