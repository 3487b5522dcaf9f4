"""The two-stage VAE of Dai & Wipf (2019): a second VAE learns the aggregate posterior Q(z).

The paper (Sec. 6.2 and the conclusion, Sec. 7): when reconstruction is good but generation is
bad, Q(z) = E_X Q(z|X) does not match the prior P(z) = N(0, I), and the two-stage approach of
Dai & Wipf, "Diagnosing and enhancing VAE models" (ICLR 2019, the paper's ref. [7]) may suffice:
a second VAE is trained on the first stage's latent codes, so that

    u ~ N(0, I)  ->  second-stage decoder  ->  z ~ Q(z)  ->  first-stage decoder  ->  image.

Choices, following Dai & Wipf where they made one:

- the training codes are *samples* z ~ Q(z|X) = N(mu(X), sigma^2(X)) of the training split, drawn
  afresh every epoch, not the means mu(X). Q(z) is the mixture of those Gaussians (Sec. 4), so the
  samples are its draws and the first-stage decoder was trained on exactly such z; the N training
  means alone are a point cloud with Var < Var[Q(z)] that a second VAE could only memorise;
- only the active variables are modelled (``active_only``, default): an inactive variable is
  ignored by the generator (Fig. 3), so it is decoded as 0, as the ``fid_zeroed`` check does;
  ``active_only=False`` models all of them (Dai & Wipf's setting);
- the codes are standardised per variable with the Sec. 4 moments of Q(z) on the training split,
  mean E[mu_i] and standard deviation sqrt(Var[mu_i] + E[sigma_i^2]), and the generated codes are
  mapped back: an invertible affine map that changes nothing the second stage can represent, but
  lets it start from codes of unit scale when a small lambda left Q(z) far from N(0, I) (Dai &
  Wipf's first stage, at lambda = 1, had codes of unit scale already);
- the second stage is a small dense VAE (``two_stage_hidden``, default 256-256; Dai & Wipf's has
  three 1024-wide layers with skip connections) with lambda = 1, a Gaussian decoder and a learned
  scalar standard deviation gamma (Dai & Wipf's "learned gamma"), whose negative log-likelihood is
  sum_j [(z_j - zhat_j)^2 / (2 gamma^2) + log gamma] + d/2 log(2 pi);
- generation samples the second stage's own model of Q(z): u ~ N(0, I), z ~ N(zhat(u), gamma^2 I).
  Dai & Wipf decode the mean zhat(u), the same once gamma -> 0; but a short CPU-scale second stage
  keeps gamma large (measured 0.23 at lambda = 0.1, 0.93 at lambda = 1 on mnist5k), and its mean
  alone then loses the variance of the variables it has not learned to encode (measured at
  lambda = 1 after 30 first-stage epochs: FID-proxy 353 from the mean, 223 sampled, 290 prior);
- its latent dimension defaults to the number of variables it models (Dai & Wipf: the same as
  the first stage's); Adam at the trial's learning rate, cosine-annealed to 0 over its epochs.

How normal the codes are is measured with the Sec. 4 moments (``vaesweep.engine.latents.moment_stats``)
of the eval split, for the first stage's kept variables z and for the second stage's codes u:
the variance law max_i |Var[mu_i] + E[sigma_i^2] - 1| and the first moment max_i |E[mu_i]|, plus
the Fréchet (2-Wasserstein) distance of a Gaussian fit to the aggregate samples from N(0, I),
which also sees correlations between variables. Beside ``fid_two_stage`` comes ``fid_q_gaussian``,
the baseline that decodes z drawn from the Gaussian with Q(z)'s Sec. 4 moments: what the second
stage adds beyond the affine map.

    stage = fit_two_stage(model, x_train, active, TwoStageSettings(epochs=100))
    images = stage.sample(64, seed=0)
    two_stage_scores(stage, x_eval, seed=0, scorer=scorer)   # fid_two_stage, two_stage_* numbers
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vaesweep.config.errors import TrainingDiverged
from vaesweep.engine.latents import encode_all, moment_stats
from vaesweep.engine.losses import kl_per_variable
from vaesweep.engine.models import eval_mode, reparameterize
from vaesweep.engine.sampling import decode_images, prior_codes

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


@dataclass(frozen=True)
class TwoStageSettings:
    epochs: int = 100
    latent: int | None = None  # None: the number of modelled first-stage variables
    hidden: tuple[int, ...] = (256, 256)
    active_only: bool = True
    batch_size: int = 128
    lr: float = 1e-3
    seed: int = 0


def settings_for(cfg) -> TwoStageSettings:
    """The second stage's settings from a ``TrialConfig`` (its two_stage_* fields, batch size, lr, seed)."""
    return TwoStageSettings(
        cfg.two_stage_epochs,
        cfg.two_stage_latent,
        tuple(cfg.two_stage_hidden),
        cfg.two_stage_active_only,
        cfg.batch_size,
        cfg.lr,
        cfg.seed,
    )


def _mlp(widths: tuple[int, ...]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class SecondStageVAE(nn.Module):
    """A dense VAE on d-dimensional codes z with a k-dimensional latent u and a Gaussian decoder
    N(zhat(u), gamma^2 I), gamma a learned scalar (Dai & Wipf 2019)."""

    def __init__(self, dim: int, latent: int, hidden: tuple[int, ...] = (256, 256)):
        super().__init__()
        self.dim, self.latent_dim = dim, latent
        self.encoder = _mlp((dim, *hidden))
        self.mu = nn.Linear(hidden[-1], latent)
        self.logvar = nn.Linear(hidden[-1], latent)
        self.decoder = nn.Sequential(*_mlp((latent, *reversed(hidden))), nn.Linear(hidden[0], dim))
        self.log_gamma = nn.Parameter(torch.zeros(()))  # log of the decoder's standard deviation

    def encode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.encoder(z)
        return self.mu(h), self.logvar(h)

    def decode(self, u: torch.Tensor) -> torch.Tensor:
        return self.decoder(u)


def second_stage_loss(model: SecondStageVAE, z: torch.Tensor, eps: torch.Tensor):
    """Eq. (6) with lambda = 1 and the learned-gamma Gaussian decoder; returns (loss, nll (B,), kl (B, k))."""
    mu, logvar = model.encode(z)
    zhat = model.decode(reparameterize(mu, logvar, eps))
    nll = (0.5 * ((z - zhat) / model.log_gamma.exp()).pow(2) + model.log_gamma + HALF_LOG_2PI).sum(1)
    kl = kl_per_variable(mu, logvar)  # eq. (3)
    return (nll + kl.sum(1)).mean(), nll, kl


@torch.no_grad()
def first_stage_posterior(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(X), log sigma^2(X) of the first stage on images ``x``, with the model in eval mode."""
    with eval_mode(model):
        return encode_all(model, x)


def sample_codes(mu: torch.Tensor, logvar: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One z ~ Q(z|X) = N(mu(X), sigma^2(X)) per row: together, draws of the aggregate posterior Q(z)."""
    return reparameterize(mu, logvar, torch.randn(mu.shape, generator=gen, device=mu.device, dtype=mu.dtype))


def train_second_stage(
    mu: torch.Tensor, logvar: torch.Tensor, settings: TwoStageSettings
) -> tuple[SecondStageVAE, dict]:
    """Fit a ``SecondStageVAE`` to codes drawn afresh from Q(z|X) every epoch; ``mu``, ``logvar`` (N, d)
    are the first stage's (standardised) posteriors of the modelled variables. Returns the model
    (eval mode) and its last epoch's mean loss, NLL, KL and gamma (one host sync, at the end)."""
    n, dim = mu.shape
    device, s = mu.device, settings
    with torch.random.fork_rng(devices=[]):  # weights from the seed, global RNG untouched
        torch.manual_seed(s.seed)
        model = SecondStageVAE(dim, s.latent or dim, tuple(s.hidden)).to(device)
    gen = torch.Generator(device).manual_seed(s.seed)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.epochs)
    sums = torch.zeros(3, device=device)
    for _ in range(s.epochs):
        z_all = sample_codes(mu, logvar, gen)
        order = torch.randperm(n, generator=gen, device=device)
        sums.zero_()
        for start in range(0, n, s.batch_size):
            z = z_all[order[start : start + s.batch_size]]
            eps = torch.randn(len(z), model.latent_dim, generator=gen, device=device)
            loss, nll, kl = second_stage_loss(model, z, eps)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sums += torch.stack([loss.detach() * len(z), nll.detach().sum(), kl.detach().sum()])
        sched.step()
    loss, nll, kl = (sums / n).tolist()
    if not all(math.isfinite(v) for v in (loss, nll, kl)):
        raise TrainingDiverged(
            f"two_stage: the second-stage VAE's loss became {loss}; lower lr or "
            "two_stage_epochs, or set two_stage: false"
        )
    return model.eval(), {"loss": loss, "nll": nll, "kl": kl, "gamma": float(model.log_gamma.detach().exp())}


@dataclass
class TwoStageVAE:
    """A trained first stage, the second stage fitted to its codes, and which variables it models."""

    first: nn.Module
    second: SecondStageVAE
    keep: torch.Tensor  # (d,) indices of the first-stage variables the second stage models
    shift: torch.Tensor  # (d,) E[mu_i]: the second stage models (z - shift) / scale
    scale: torch.Tensor  # (d,) sqrt(Var[mu_i] + E[sigma_i^2]), Sec. 4
    fit: dict  # the second stage's final training loss, nll, kl, gamma

    @property
    def latent_dim(self) -> int:
        return self.first.latent_dim

    @torch.no_grad()
    def codes(self, n: int, seed: int) -> torch.Tensor:
        """n first-stage codes z (n, L): u ~ N(0, I), then N(zhat(u), gamma^2 I), mapped back from the
        standardised scale; unmodelled variables 0. Reproducible from ``seed`` (u is ``prior_codes``')."""
        device = self.keep.device
        gen = torch.Generator(device).manual_seed(seed)
        u = torch.randn(n, self.second.latent_dim, generator=gen, device=device)
        noise = torch.randn(n, len(self.keep), generator=gen, device=device)
        z = torch.zeros(n, self.latent_dim, device=device)
        z[:, self.keep] = self.shift + self.scale * (self.second.decode(u) + self.second.log_gamma.exp() * noise)
        return z

    @torch.no_grad()
    def gaussian_codes(self, n: int, seed: int) -> torch.Tensor:
        """The baseline without a second stage: z ~ N(shift, scale^2), the Gaussian with Q(z)'s Sec. 4
        moments, reproducible from ``seed``; unmodelled variables 0."""
        eps = prior_codes(n, len(self.keep), seed, self.keep.device)
        z = torch.zeros(n, self.latent_dim, device=self.keep.device)
        z[:, self.keep] = self.shift + self.scale * eps
        return z

    def sample(self, n: int, seed: int) -> torch.Tensor:
        """n generated images (n, C, H, W) in [0, 1]: the first-stage decoder's means at ``codes``."""
        return decode_images(self.first, self.codes(n, seed))


def kept_variables(active: list[bool], active_only: bool, device: torch.device | str = "cpu") -> torch.Tensor:
    """Indices of the first-stage variables the second stage models: the active ones, or all."""
    keep = [i for i, a in enumerate(active) if a or not active_only]
    if not keep:  # every variable collapsed: nothing carries information; model them all
        keep = list(range(len(active)))
    return torch.tensor(keep, dtype=torch.long, device=device)


def fit_two_stage(
    first: nn.Module, x_train: torch.Tensor, active: list[bool], settings: TwoStageSettings
) -> TwoStageVAE:
    """Train the second stage on the first stage's codes of ``x_train`` (Dai & Wipf 2019)."""
    keep = kept_variables(active, settings.active_only, x_train.device)
    mu, logvar = first_stage_posterior(first, x_train)
    mu, logvar = mu[:, keep], logvar[:, keep]
    m = moment_stats(mu, logvar)
    shift, scale = m["mean_mu"], m["law"].sqrt()  # Q(z)'s mean and standard deviation, Sec. 4
    second, fit = train_second_stage((mu - shift) / scale, logvar - 2 * scale.log(), settings)
    return TwoStageVAE(first, second, keep, shift, scale, fit)


# --- how normal the codes are ----------------------------------------------------------------------


def w2_to_standard_normal(samples: torch.Tensor) -> float:
    """Fréchet distance d^2 between a Gaussian fitted to ``samples`` (N, d) and N(0, I):
    ||m||^2 + Tr(S + I - 2 S^(1/2)) = ||m||^2 + sum_i (sqrt(lambda_i(S)) - 1)^2."""
    x = samples.double()
    eig = torch.linalg.eigvalsh(torch.cov(x.T).reshape(x.shape[1], x.shape[1])).clamp(min=0)
    return float(x.mean(0).pow(2).sum() + (eig.sqrt() - 1).pow(2).sum())


def normality(mu: torch.Tensor, logvar: torch.Tensor, samples: torch.Tensor) -> dict:
    """Sec. 4 moments of the aggregate of N(mu, sigma^2) rows, and the Gaussian-fit distance of its samples."""
    m = moment_stats(mu, logvar)
    return {
        "law_residual_max": float((m["law"] - 1).abs().max()),
        "mean_mu_abs_max": float(m["mean_mu"].abs().max()),
        "w2": w2_to_standard_normal(samples),
    }


@torch.no_grad()
def two_stage_scores(
    stage: TwoStageVAE, x_eval: torch.Tensor, seed: int, scorer=None, active_threshold: float = 0.01
) -> dict:
    """The two-stage numbers on the eval split, every key prefixed (``two_stage_``, ``fid_``):
    - ``two_stage_z_*``: how normal the first stage's modelled codes are (law residual, first
      moment, w2), ``two_stage_u_*``: the same for the second stage's codes u of those z;
      ``two_stage_zstd_w2``: w2 of the standardised codes (z - shift) / scale, which the affine
      map cannot make normal (correlations between variables);
    - ``two_stage_dim``, ``two_stage_u_active``, ``two_stage_gamma``, ``two_stage_loss``;
    - with a ``scorer`` (vaesweep.engine.fid.FidScorer), FID-proxies of N images, N = the scorer's real
      images, noise from ``seed`` (as ``fid_prior``'s z): ``fid_two_stage``, the two-stage samples,
      and ``fid_q_gaussian``, the baseline decoding z ~ N(E[mu], Var[mu] + E[sigma^2]) per variable:
      what the second stage adds beyond matching Q(z)'s Sec. 4 moments.
    """
    gen = torch.Generator(x_eval.device).manual_seed(seed + 1)  # fixed eval noise, as TrialRun.evaluate
    mu, logvar = first_stage_posterior(stage.first, x_eval)
    mu, logvar = mu[:, stage.keep], logvar[:, stage.keep]
    z = sample_codes(mu, logvar, gen)
    mu_u, logvar_u = stage.second.encode((z - stage.shift) / stage.scale)
    u = sample_codes(mu_u, logvar_u, gen)
    out = {f"two_stage_z_{k}": v for k, v in normality(mu, logvar, z).items()}
    out["two_stage_zstd_w2"] = w2_to_standard_normal((z - stage.shift) / stage.scale)
    out.update({f"two_stage_u_{k}": v for k, v in normality(mu_u, logvar_u, u).items()})
    u_active = int((mu_u.var(0, unbiased=False) > active_threshold).sum())  # Burda et al., as the first stage
    out.update(
        two_stage_dim=len(stage.keep),
        two_stage_u_active=u_active,
        two_stage_gamma=stage.fit["gamma"],
        two_stage_loss=stage.fit["loss"],
    )
    if scorer is not None:
        n = len(scorer.real)
        out["fid_two_stage"] = scorer.score(stage.sample(n, seed))
        out["fid_q_gaussian"] = scorer.score(decode_images(stage.first, stage.gaussian_codes(n, seed)))
    return out
