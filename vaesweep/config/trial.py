"""The typed, validated configuration of one trial (one VAE trained once).

A ``TrialConfig`` is plain data: built from a dict (Python, a Ray Tune ``param_space``, the CLI,
a study's YAML) and validated by pydantic before anything runs. Defaults follow the paper:
the dense 784-256-64-32-16 network, minibatches of 128, lambda = 1.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

# dataset name -> torchvision class (vaesweep/engine/data.py loads them)
TORCHVISION_SETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "cifar10": "CIFAR10"}
# generated data with k known factors, sprites1 ... sprites5 (vaesweep/engine/sprites.py, issue 28)
MAX_SPRITE_FACTORS = 5
SPRITES = {f"sprites{k}": k for k in range(1, MAX_SPRITE_FACTORS + 1)}


def dataset_names() -> list[str]:
    return ["mnist5k", *TORCHVISION_SETS, f"sprites1..sprites{MAX_SPRITE_FACTORS}", "npz:PATH"]


def check_dataset_name(name: str) -> str:
    """Validate a data set name without loading it (used by config validation)."""
    if name == "mnist5k" or name in TORCHVISION_SETS or name in SPRITES:
        return name
    if name.startswith("npz:") and len(name) > 4:
        return name
    raise ValueError(f"unknown dataset '{name}'; use one of {', '.join(dataset_names())}")


# The training choices of the paper's Keras (2019) code that PyTorch makes otherwise, as one ``preset``
# (every field stays settable on its own; a field given explicitly wins over the preset's value):
PRESETS: dict[str, dict] = {
    "keras2019": {
        "init": "keras",  # glorot_uniform weights, zero biases
        "adam_eps": 1e-7,  # keras.optimizers.Adam's epsilon (K.epsilon())
        "bce_clip": 1e-7,  # keras' binary_crossentropy clips probabilities to [1e-7, 1 - 1e-7]
        "bn_momentum": 0.01,  # keras BatchNormalization(momentum=0.99) in PyTorch's convention
        "bn_eps": 1e-3,  # keras BatchNormalization(epsilon=1e-3)
    }
}


# The fields a collapse number depends on beyond the network and the loss: named with every such number
# (``recipe``); the last four act on the conv net only.
TRAINING_CHOICES = ("preset", "init", "adam_eps", "bce_clip", "bn_momentum", "bn_eps", "conv_relu", "conv_decoder")
CONV_ONLY_CHOICES = ("bn_momentum", "bn_eps", "conv_relu", "conv_decoder")


@dataclass(frozen=True)
class KLSchedule:
    """The KL term of eq. (6) and its Sec. 6.1 remedies (vaesweep/engine/losses.py applies it)."""

    lam: float = 1.0
    warmup_steps: int = 0
    free_bits: float = 0.0
    capacity_max: float | None = None
    capacity_steps: int = 0
    gamma: float = 1000.0


@dataclass(frozen=True)
class Tolerances:
    """When a variable is active and the Sec. 4 laws hold (vaesweep/engine/latents.py)."""

    active_threshold: float = 0.01
    law_tol: float = 0.15
    mu_tol: float = 0.15


class TrialConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # data
    dataset: str = Field(
        "mnist5k",
        description="mnist5k | mnist | fashion_mnist | cifar10 | sprites1..sprites5 | npz:PATH "
        "(mnist: the data cache, see 'data fetch mnist', or data_root)",
    )
    data_root: str | None = Field(None, description="folder of torchvision data sets")
    download: bool = Field(False, description="let torchvision download into data_root")
    max_train: int | None = Field(None, ge=2, description="use only the first N training images")
    max_eval: int | None = Field(None, ge=2, description="use only the first N eval images")
    # model
    arch: Literal["dense", "conv"] = "dense"
    hidden: tuple[int, ...] = Field((256, 64, 32), min_length=1, description="dense hidden widths")
    conv_width: int = Field(32, ge=2, description="channels of the conv net's deeper layers (Fig. 4: 32)")
    latent_dim: int = Field(16, ge=1, le=4096)
    # training choices the paper (Keras, 2019) leaves unstated; PyTorch's by default, Keras' with preset: keras2019
    preset: Literal["keras2019"] | None = Field(
        None,
        description="keras2019: init keras, adam_eps 1e-7, bce_clip 1e-7, bn_momentum 0.01, bn_eps 1e-3 "
        "(fields given explicitly win)",
    )
    init: Literal["torch", "keras", "keras_weights", "keras_biases"] = Field(
        "torch",
        description="weight init: torch (PyTorch's defaults), keras (glorot_uniform weights, zero biases), "
        "keras_weights (only the weights glorot_uniform), keras_biases (only the biases zero)",
    )
    conv_relu: Literal["pairs", "every"] = Field(
        "pairs",
        description="conv encoder's ReLUs: pairs (after each BatchNorm, Fig. 4 as drawn) or every (also after "
        "each conv, the last 2x2 one before the heads included)",
    )
    conv_decoder: Literal["bn", "mirror"] = Field(
        "bn",
        description="conv decoder: bn (transposed conv + conv pairs with BatchNorm) or mirror (the encoder mirrored "
        "with transposed convs, no BatchNorm)",
    )
    bn_momentum: float = Field(0.1, gt=0, le=1, description="BatchNorm momentum, PyTorch's convention (Keras: 0.01)")
    bn_eps: float = Field(1e-5, gt=0, description="BatchNorm epsilon (Keras: 1e-3)")
    # loss, eq. (6) and the Sec. 6.1 remedies
    recon_loss: Literal["bce", "mse"] = Field(
        "bce", description="bce: Bernoulli decoder; mse: Gaussian, summed over pixels"
    )
    lam: float = Field(1.0, ge=0, description="KL weight lambda (beta-VAE's beta)")
    warmup_steps: int = Field(0, ge=0, description="KL warm-up: minibatches of linear lambda annealing")
    free_bits: float = Field(0.0, ge=0, description="minimum KL (nats) per variable")
    capacity_max: float | None = Field(None, ge=0, description="capacity beta-VAE: final C (nats)")
    capacity_steps: int = Field(0, ge=0, description="capacity beta-VAE: minibatches for C to reach C_max")
    gamma: float = Field(1000.0, gt=0, description="capacity beta-VAE: weight of |KL - C|")
    # optimisation
    epochs: int = Field(50, ge=1)
    batch_size: int = Field(128, ge=2)
    lr: float = Field(1e-3, gt=0)
    adam_eps: float = Field(1e-8, gt=0, description="Adam's epsilon (Keras: 1e-7)")
    bce_clip: float = Field(
        0.0,
        ge=0,
        lt=0.5,
        description="bce: clip the decoder's probabilities to [bce_clip, 1 - bce_clip], no gradient beyond, as "
        "Keras does (1e-7); 0: exact. Training loss only; metrics use the exact loss",
    )
    seed: int = 0
    device: str = Field("auto", description="auto | cpu | cuda | cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (default: torch's own)")
    memory_format: Literal["auto", "channels_last", "contiguous"] = Field(
        "auto",
        description="layout of the conv net's weights and activations; the same numbers to float rounding. auto: "
        "channels_last for the conv net on a CPU (its step 1.4x faster, benchmarks/results/conv_step.md), "
        "contiguous otherwise",
    )
    # metrics
    eval_every: int | Literal["auto"] = Field(
        "auto",
        description="collapse metrics every N epochs (and at the first and final). auto: the whole epochs "
        "closest to settle_min_steps / (2 x settle_patience) minibatches, at least 1, so a settle window holds "
        "~2 x settle_patience evaluations and a settled verdict comes at most one interval late: every 5 epochs on "
        "mnist5k (32 minibatches an epoch, one evaluation per ~160), every epoch on full MNIST (469)",
    )
    gain_every: int = Field(10, ge=1, description="reconstruction gains every N epochs (and at the end)")
    track_every: int = Field(0, ge=0, description="Fig. 2: record minibatch var_mu every K steps (0: off)")
    active_threshold: float = Field(0.01, gt=0, description="active if Var[mu_i] > threshold")
    law_tol: float = Field(0.15, gt=0, description="KL works if max_i |var_mu + mean_sigma2 - 1| <= law_tol")
    mu_tol: float = Field(0.15, gt=0, description="KL works if max_i |E[mu_i]| <= mu_tol")
    settle_patience: int = Field(
        5,
        ge=2,
        description="settled: the same set of active variables and a still "
        "law residual over at least this many evaluations (vaesweep/engine/settle.py)",
    )
    settle_min_steps: int = Field(
        1500, ge=0, description="settled: the evaluations compared span at least this many minibatches"
    )
    settle_law_tol: float = Field(
        0.05,
        gt=0,
        description="settled: law_residual_max drifts at most this much "
        "over those evaluations (mean of the last half - mean of the first half)",
    )
    stop_when: Literal["budget", "settled"] = Field(
        "budget",
        description="budget: train all epochs; settled: end the trial at the first evaluation whose collapse "
        "has settled (settle_*) with the same Sec. 4 verdict (kl_working) over the settle window, measuring there "
        "what the last epoch measures",
    )
    stop_min_steps: int = Field(
        0, ge=0, description="stop_when: settled ends a trial only once it has trained at least this many minibatches"
    )
    # generation quality: FID-proxy (vaesweep/engine/fid.py)
    fid: bool = Field(True, description="FID-proxy scores fid_prior, fid_recon, fid_zeroed at the end")
    fid_every: int = Field(0, ge=0, description="FID-proxy also every N epochs (0: only at the end)")
    fid_samples: int = Field(1000, ge=2, description="images per FID-proxy score (capped at the eval split)")
    cache_dir: str | None = Field(
        None, description="cache root: FID feature nets, fetched data (default $VAESWEEP_CACHE, ~/.cache/vaesweep)"
    )
    # the two-stage VAE of Dai & Wipf 2019 (Sec. 6.2, 7): vaesweep/engine/two_stage.py
    two_stage: bool = Field(
        False, description="at the end, fit a second-stage VAE to the codes: fid_two_stage, two_stage_*"
    )
    two_stage_epochs: int = Field(100, ge=1, description="second-stage VAE training epochs")
    two_stage_latent: int | None = Field(
        None, ge=1, description="second-stage latent dim (default: the number of variables it models)"
    )
    two_stage_hidden: tuple[int, ...] = Field((256, 256), min_length=1, description="second-stage dense widths")
    two_stage_active_only: bool = Field(
        True, description="model only the active variables (inactive ones decode as 0); false: all"
    )
    # diagnostics beside the posterior-collapse literature: vaesweep/engine/information.py
    mi_images: int = Field(
        1000,
        ge=0,
        description="mutual information I_q(x; z) (mi, and mi_i per variable) at every evaluation on the first N eval "
        "images (0: off); the estimator never exceeds log N",
    )
    iw_samples: int = Field(
        100, ge=0, description="importance-weighted NLL (nll_iw, Burda et al.) at the final epoch: K samples (0: off)"
    )
    iw_images: int = Field(1000, ge=1, description="nll_iw averages over the first N eval images")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data):
        """A preset fills the fields it sets that were not given (an unknown preset is left to the field's check)."""
        if isinstance(data, dict) and data.get("preset") in PRESETS:
            data = {**PRESETS[data["preset"]], **data}
        return data

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, v: str) -> str:
        return check_dataset_name(v)

    @field_validator("hidden", "two_stage_hidden")
    @classmethod
    def _positive_widths(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if any(w < 1 for w in v):
            raise ValueError("hidden widths must be positive integers, e.g. [256, 64, 32]")
        return v

    @field_validator("hidden", "two_stage_hidden", mode="before")
    @classmethod
    def _widths_from_text(cls, v):  # the CLI's --hidden 256,64,32 and --two-stage-hidden 256,256
        return [w for w in v.split(",") if w.strip()] if isinstance(v, str) else v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if v not in ("auto", "cpu", "cuda") and not (v.startswith("cuda:") and v[5:].isdigit()):
            raise ValueError("device must be auto, cpu, cuda or cuda:N")
        return v

    @model_validator(mode="after")
    def _capacity_needs_steps(self) -> TrialConfig:
        if self.capacity_max is not None and self.warmup_steps:
            raise ValueError("capacity_max (capacity beta-VAE) and warmup_steps do not combine; choose one")
        return self

    def for_epochs_of(self, steps_per_epoch: int) -> TrialConfig:
        """This configuration with ``eval_every: auto`` resolved for data of ``steps_per_epoch`` minibatches an
        epoch (the engine calls it once it has loaded the data)."""
        if self.eval_every != "auto":
            return self
        interval = self.settle_min_steps / (2 * self.settle_patience)  # minibatches between evaluations
        return self.model_copy(update={"eval_every": max(1, round(interval / steps_per_epoch))})

    def epoch_plan(self, epoch: int, final: bool | None = None) -> tuple[bool, bool, bool]:
        """What the end of ``epoch`` (1-based) measures: (collapse metrics, with reconstruction
        gains, FID-proxy). The first and final epochs are always evaluated, the final with everything.
        ``final``: whether ``epoch`` ends the trial (default: it is the budget's last; a settled stop
        decides it after the epoch's collapse metrics, vaesweep.engine.trial.TrialRecord). ``eval_every`` must
        be resolved (``for_epochs_of``)."""
        if self.eval_every == "auto":
            raise ValueError("eval_every: auto is resolved by the engine; call for_epochs_of(steps_per_epoch) first")
        final = epoch == self.epochs if final is None else final
        fid = self.fid and (final or (self.fid_every > 0 and epoch % self.fid_every == 0))
        evaluated = epoch == 1 or epoch % self.eval_every == 0 or final or fid
        return evaluated, final or epoch % self.gain_every == 0, fid

    @property
    def schedule(self) -> KLSchedule:
        return KLSchedule(
            self.lam, self.warmup_steps, self.free_bits, self.capacity_max, self.capacity_steps, self.gamma
        )

    @property
    def tolerances(self) -> Tolerances:
        return Tolerances(self.active_threshold, self.law_tol, self.mu_tol)


def recipe(values: Mapping[str, Any]) -> str:
    """The training choices of a trial's config values (a dict or a table row), in words: 'init torch',
    'preset keras2019', 'init keras, adam_eps 1e-07', 'preset keras2019, conv_relu every'. Names the init or
    the preset, then every other choice that differs from its default (the preset's, under a preset); the
    conv-only ones only for ``arch: conv``."""
    fields = TrialConfig.model_fields
    expected = {name: fields[name].default for name in TRAINING_CHOICES}
    preset = values.get("preset")
    if isinstance(preset, str):
        expected.update(PRESETS[preset])
        parts = [f"preset {preset}"]
    else:
        parts = [f"init {values.get('init') or expected['init']}"]
    for name in TRAINING_CHOICES[1:]:
        value = values.get(name)
        if value is None or (isinstance(value, float) and value != value):  # absent (NaN in a table)
            continue
        if name in CONV_ONLY_CHOICES and values.get("arch", fields["arch"].default) != "conv":
            continue
        if value != expected[name] and not (name == "init" and not isinstance(preset, str)):
            parts.append(f"{name} {value:g}" if isinstance(value, float) else f"{name} {value}")
    return ", ".join(parts)


def trial_fields() -> set[str]:
    return set(TrialConfig.model_fields)


def one_line(err: ValidationError, prefix: str = "") -> str:
    """The first validation problem as one line naming the field: 'field: what is wrong'."""
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key; remove it or check its spelling"
    elif first["type"] == "missing":
        msg = "required; add it"
    return f"{prefix}{loc + ': ' if loc else ''}{msg}"
