"""Mutual information, importance-weighted NLL and the diagnostics for anyone's VAE (issue 26): the estimators
against known answers, on real small trained models, and ``vaesweep.diagnose`` / ``CollapseTracker`` on a VAE
written the pytorch/examples way, defined here."""

import math

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaesweep
from vaesweep import CollapseTracker, Diagnosis, diagnose, train_vae
from vaesweep.engine.information import importance_weighted_nll, mutual_information

N, L = 1000, 4


def codes(mu: torch.Tensor, logvar: torch.Tensor, seed: int = 0) -> torch.Tensor:
    return mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=torch.Generator().manual_seed(seed))


def brute_force(mu, logvar, z) -> tuple[float, torch.Tensor]:
    """The estimator written out on the full N x N x L tensor (small N only)."""
    log_q = -0.5 * ((z[:, None] - mu[None]).pow(2) / logvar[None].exp() + logvar[None] + math.log(2 * math.pi))
    own = log_q.diagonal(dim1=0, dim2=1).T  # (N, L)
    joint = (own.sum(1) - torch.logsumexp(log_q.sum(2), 1)).mean() + math.log(len(mu))
    per_var = (own - torch.logsumexp(log_q, 1)).mean(0) + math.log(len(mu))
    return float(joint), per_var


def test_mi_of_an_encoder_that_ignores_x_is_zero():
    mu, logvar = torch.full((N, L), 0.3), torch.full((N, L), -1.0)
    joint, per_var = mutual_information(mu, logvar, codes(mu, logvar))
    assert float(joint) == pytest.approx(0.0, abs=1e-6)
    assert per_var.abs().max() < 1e-5


def test_mi_of_a_near_deterministic_encoder_reaches_log_n():
    gen = torch.Generator().manual_seed(1)
    mu, logvar = torch.randn(N, L, generator=gen), torch.full((N, L), -14.0)  # sigma ~ 1e-3
    joint, per_var = mutual_information(mu, logvar, codes(mu, logvar))
    assert float(joint) == pytest.approx(math.log(N), abs=1e-3)  # every code told apart: the ceiling log N
    assert (per_var <= math.log(N) + 1e-5).all() and (per_var > math.log(N) - 1).all()  # 1-D codes overlap a bit


def test_per_variable_mi_of_an_inactive_variable_is_zero_and_matches_brute_force():
    gen = torch.Generator().manual_seed(2)
    mu, logvar = torch.randn(300, 3, generator=gen), torch.full((300, 3), -4.0)
    mu[:, 1], logvar[:, 1] = 0.0, 0.0  # variable 1 inactive: q(z_1|x) = N(0, 1) for every x (Table 1, red rows)
    z = codes(mu, logvar)
    joint, per_var = mutual_information(mu, logvar, z, entries_per_chunk=30_000)  # several chunks
    assert abs(float(per_var[1])) < 1e-4 and (per_var[[0, 2]] > 1.0).all()
    want_joint, want_per_var = brute_force(mu, logvar, z)
    assert float(joint) == pytest.approx(want_joint, abs=1e-4)
    assert torch.allclose(per_var, want_per_var, atol=1e-4)
    alone, none = mutual_information(mu, logvar, z, per_variable=False)
    assert none is None and float(alone) == pytest.approx(want_joint, abs=1e-4)


@pytest.fixture(scope="module")
def trained():
    """A real small trained model (mnist5k, 4 epochs), MI and nll_iw measured by the trial itself."""
    cfg = {
        "epochs": 4,
        "max_train": 1024,
        "max_eval": 300,
        "hidden": [64, 32],
        "latent_dim": 8,
        "batch_size": 64,
        "threads": 1,
        "fid": False,
        "iw_samples": 50,
        "mi_images": 200,
    }
    reports = []
    return train_vae(cfg, report=reports.append), reports


def test_a_trial_reports_mi_every_evaluation_and_nll_iw_at_its_end(trained):
    result, reports = trained
    assert all(0 < r["mi"] <= math.log(200) + 1e-6 for r in reports)  # on the first 200 eval images
    assert all(r["mi_log_n"] == pytest.approx(math.log(200)) for r in reports)
    assert [("nll_iw" in r) for r in reports] == [False, False, False, True]  # the final epoch only
    s = result.summary
    assert "nll_iw" in s and "nll_iw_seconds" not in s  # a timing is no answer
    assert s["nll_iw"] <= -s["elbo"]  # Burda et al.: a tighter bound than the ELBO, on the same 300 images
    mi_i = [r["mi_i"] for r in result.latents]
    assert all(m <= math.log(200) + 1e-5 for m in mi_i)
    inactive = [r["mi_i"] for r in result.latents if not r["active"]]
    assert inactive and max(inactive) < 0.05  # ~ no information in an inactive variable (short training: 2 here)
    top = max(result.latents, key=lambda r: r["var_mu"])  # the most used variable carries the most
    assert top["mi_i"] == max(mi_i) > 5 * max(inactive)


def test_nll_iw_is_at_most_minus_elbo_and_decreases_in_k(trained):
    result, _ = trained
    x = vaesweep.load_dataset("mnist5k").eval[:300]
    nll = {
        k: importance_weighted_nll(result.model, x, "bce", k, torch.Generator().manual_seed(5)) for k in (1, 10, 100)
    }
    assert nll[1] == pytest.approx(-result.summary["elbo"], rel=0.01)  # K = 1 is the ELBO (another eps draw)
    assert nll[100] < nll[10] < nll[1]
    assert nll[1] - nll[100] > 0.3  # a real gap, not noise: ~1 nat on this model


def test_diagnose_is_the_trials_own_evaluation(trained):
    result, _ = trained
    cfg = result.config
    x = vaesweep.load_dataset("mnist5k").eval[: cfg.max_eval]
    d = diagnose(result.model, x, mi_images=cfg.mi_images, seed=cfg.seed + 1)  # the trial's eval noise
    assert d.latents == result.latents
    assert {k: d.summary[k] for k in ("n_active", "law_residual_max", "kl_working", "mi", "elbo")} == {
        k: result.summary[k] for k in ("n_active", "law_residual_max", "kl_working", "mi", "elbo")
    }


class VAE(nn.Module):
    """pytorch/examples vae/main.py (784-400-20), hidden width shrunk to keep the test fast."""

    def __init__(self, hidden: int = 100, latent: int = 20):
        super().__init__()
        self.fc1 = nn.Linear(784, hidden)
        self.fc21 = nn.Linear(hidden, latent)
        self.fc22 = nn.Linear(hidden, latent)
        self.fc3 = nn.Linear(latent, hidden)
        self.fc4 = nn.Linear(hidden, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x))
        return self.fc21(h1), self.fc22(h1)

    def reparameterize(self, mu, logvar):
        std = torch.exp(0.5 * logvar)
        eps = torch.randn_like(std)
        return mu + eps * std

    def decode(self, z):
        h3 = F.relu(self.fc3(z))
        return torch.sigmoid(self.fc4(h3))

    def forward(self, x):
        mu, logvar = self.encode(x.view(-1, 784))
        z = self.reparameterize(mu, logvar)
        return self.decode(z), mu, logvar


def loss_function(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def test_diagnose_and_tracker_on_a_pytorch_examples_vae():
    torch.manual_seed(0)
    data = vaesweep.load_dataset("mnist5k")
    x_train, x_eval = data.train[:2048].view(-1, 784), data.eval[:300].view(-1, 784)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    tracker = CollapseTracker(patience=3, min_steps=32, law_tol=100.0)  # any drift allowed: settles on the set
    seen, step = [], 0
    for _ in range(6):
        model.train()
        for i in range(0, len(x_train), 128):
            data_b = x_train[i : i + 128]
            optimizer.zero_grad()
            recon, mu, logvar = model(data_b)
            loss_function(recon, data_b, mu, logvar).backward()
            optimizer.step()
            step += 1
        status = tracker.observe(step, diagnose(model, x_eval, decoder_output="means", gains=False))
        seen.append(status)
        if status["stop"]:
            break
    assert model.training  # diagnose put it back in the mode it found
    assert set(seen[-1]) == {"settled", "settled_step", "verdict_steady", "stop"}
    assert not seen[0]["settled"] and not seen[1]["settled"]  # a window needs 3 evaluations spanning 32 steps
    d = diagnose(model, x_eval, decoder_output="means", iw_samples=20)
    table = d.table
    assert isinstance(table, pd.DataFrame) and len(table) == 20
    assert list(table.columns) == [
        "latent",
        "var_mu",
        "mean_sigma2",
        "law",
        "mean_mu",
        "kl",
        "recon_gain",
        "mi_i",
        "active",
    ]
    with torch.no_grad():  # Table 1's variance, by hand from the model's own encoder
        mu, logvar = model.encode(x_eval)
    assert torch.allclose(torch.tensor(table["var_mu"].to_numpy()), mu.var(0, unbiased=False).double(), rtol=1e-4)
    assert d.summary["n_active"] == int((mu.var(0, unbiased=False) > 0.01).sum())
    inactive = table[~table["active"]]
    assert (inactive["mi_i"].abs() < 0.1).all() and (inactive["recon_gain"].abs() < 1.0).all()
    assert (table[table["active"]]["recon_gain"] > 0).all()
    assert 0 < d.summary["mi"] <= d.summary["mi_log_n"] == pytest.approx(math.log(300))
    assert d.summary["nll_iw"] <= -d.summary["elbo"] + 0.5  # 20 samples against one: tighter up to noise
    # the same model as a pair of callables gives the same numbers
    pair = diagnose((model.encode, model.decode), x_eval, decoder_output="means", iw_samples=20)
    assert pair.latents == d.latents and pair.summary == d.summary


def test_collapse_tracker_stops_where_a_settled_trial_stops(tiny):
    rule = {"settle_patience": 2, "settle_min_steps": 0, "settle_law_tol": 100.0, "active_threshold": 1e-6}
    budget = []
    train_vae({**tiny, **rule, "epochs": 5}, report=budget.append)
    stopped = train_vae({**tiny, **rule, "epochs": 5, "stop_when": "settled", "stop_min_steps": 24})
    tracker = CollapseTracker(patience=2, min_steps=0, law_tol=100.0, stop_min_steps=24)
    stops = [tracker.observe(r["step"], Diagnosis(r, r["latents"]))["stop"] for r in budget]
    assert stops == [False, False, True, True, True]  # settled at step 16, held back to 24 minibatches
    assert stopped.summary["stopped_step"] == budget[stops.index(True)]["step"] == 24


def test_diagnose_refuses_what_is_not_a_vae():
    with pytest.raises(TypeError, match="no encode/decode methods"):
        diagnose(nn.Linear(4, 4), torch.rand(10, 4))
    with pytest.raises(ValueError, match="decoder_output"):
        diagnose(VAE(), torch.rand(10, 784), decoder_output="probabilities")
