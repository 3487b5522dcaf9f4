"""The data registry and the two architectures."""

import re

import numpy as np
import pytest
import torch

from vaesweep.engine.data import DataError, check_dataset_name, load_dataset
from vaesweep.engine.models import ConvVAE, DenseVAE, build_model


def test_mnist5k_is_the_real_embedded_digits_with_a_fixed_split():
    d = load_dataset("mnist5k")
    assert d.train.shape == (4000, 1, 28, 28) and d.eval.shape == (1000, 1, 28, 28)
    assert d.train.dtype == torch.float32 and 0 <= d.train.min() and d.train.max() <= 1
    assert set(d.train_labels.unique().tolist()) == set(range(10))
    again = load_dataset("mnist5k")
    assert torch.equal(d.eval, again.eval) and d.content_hash == again.content_hash


@pytest.mark.parametrize(
    "shape,dtype", [((500, 28, 28), np.uint8), ((500, 1, 28, 28), np.float32), ((500, 3, 32, 32), np.uint8)]
)
def test_npz_arrays(tmp_path, shape, dtype):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, shape).astype(np.uint8)
    x = x if dtype == np.uint8 else (x / 255).astype(dtype)
    path = tmp_path / "own.npz"
    np.savez(path, x=x)
    d = load_dataset(f"npz:{path}")
    c = 1 if len(shape) == 3 else shape[1]
    assert d.shape == (c, shape[-2], shape[-1])
    assert (len(d.train), len(d.eval)) == (400, 100) and d.train.max() <= 1


def test_too_few_images_name_the_numbers(tmp_path):
    np.savez(tmp_path / "three.npz", x=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset(f"npz:{tmp_path / 'three.npz'}")
    assert str(err.value) == (
        f"dataset 'npz:{tmp_path / 'three.npz'}' has 2 training and 1 eval images; "
        "need at least 128 and 100 (an npz is split 80%/20%: give at least 500 images)"
    )
    np.savez(tmp_path / "enough.npz", x=np.zeros((500, 28, 28), np.uint8))
    assert len(load_dataset(f"npz:{tmp_path / 'enough.npz'}").eval) == 100  # the stated number suffices


@pytest.mark.parametrize(
    "bad,message",
    [
        (np.nan, "has 2 non-finite pixel values (NaN or inf)"),
        (np.inf, "has 2 non-finite pixel values (NaN or inf)"),
        (1.5, "is float in [0, 1.5], outside [0, 1]"),
    ],
)
def test_non_finite_or_out_of_range_pixels_are_refused(tmp_path, bad, message):
    x = np.random.default_rng(0).random((500, 28, 28)).astype(np.float32) * 0.99
    x[0, 3, 4] = x[7, 0, 0] = bad
    x[1, 1, 1] = 0.0
    np.savez(tmp_path / "bad.npz", x=x)
    with pytest.raises(DataError, match=re.escape(f"dataset npz array 'x' {message}")):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_bad_shape_and_missing_file(tmp_path):
    np.savez(tmp_path / "bad.npz", x=np.zeros((5, 20, 20), np.uint8))
    with pytest.raises(DataError, match="expected N x H x W"):
        load_dataset(f"npz:{tmp_path / 'bad.npz'}")
    with pytest.raises(DataError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")


def test_torchvision_sets_offline_give_one_line_how_to(tmp_path):
    with pytest.raises(DataError) as err:
        load_dataset("fashion_mnist", root=str(tmp_path))
    msg = str(err.value)
    assert "\n" not in msg and "--download" in msg and str(tmp_path) in msg
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("cifar10")


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        check_dataset_name("svhn")


@pytest.mark.parametrize("arch", ["dense", "conv"])
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
@pytest.mark.parametrize("latent", [2, 16, 64])
def test_architectures_any_latent_and_input(arch, in_shape, latent):
    model = build_model(arch, in_shape, latent)
    x = torch.rand(5, *in_shape)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (5, latent)
    assert model.decode(mu).shape == x.shape


def test_dense_is_the_papers_784_256_64_32_16():
    m = DenseVAE((1, 28, 28), 16)
    widths = [layer.out_features for layer in m.encoder if isinstance(layer, torch.nn.Linear)] + [m.mu.out_features]
    assert widths == [256, 64, 32, 16]


def test_conv_encoder_matches_fig4_parameter_counts():
    m = ConvVAE((1, 28, 28), 16)
    convs = [mod for mod in m.encoder.modules() if isinstance(mod, torch.nn.Conv2d)]
    counts = [sum(p.numel() for p in c.parameters()) for c in convs] + [sum(p.numel() for p in m.mu.parameters())]
    # Fig. 4: 160, 4640, 9248, 9248, 9248, 4128, 4128, 4128, 528
    assert counts == [160, 4640, 9248, 9248, 9248, 4128, 4128, 4128, 528]
