"""Command line: ``python -m vaesweep {train,run,status,...}``.

Every error a user can cause ends with one line on stderr, ``vaesweep: error: <what> (<fix>)``,
and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import get_args

import torch
from pydantic import ValidationError

from .config import TrialConfig, one_line


class UsageError(Exception):
    """A mistake the user can fix; the message is one line that says how."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage too by default)
        raise UsageError(f"{message} (see: python -m {self.prog} --help)")  # prog: e.g. 'vaesweep data fetch'


# --- train --------------------------------------------------------------------------------------

def _add_trial_flags(p: argparse.ArgumentParser) -> None:
    """One --flag per TrialConfig field (--latent-dim for latent_dim), parsed by pydantic."""
    for name, f in TrialConfig.model_fields.items():
        flag = "--" + name.replace("_", "-")
        if f.annotation is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=f.description)
        else:
            choices = get_args(f.annotation) if name in ("arch", "recon_loss") else None
            p.add_argument(flag, dest=name, default=None, choices=choices, metavar=name.upper(),
                           help=f"{f.description or ''} (default: {f.default})")


def _trial_config(args: argparse.Namespace) -> TrialConfig:
    given = {k: getattr(args, k) for k in TrialConfig.model_fields if getattr(args, k, None) is not None}
    try:
        return TrialConfig(**given)
    except ValidationError as err:
        field, problem = one_line(err).split(":", 1)
        raise UsageError(f"--{field.replace('_', '-')}:{problem}") from None


def _print_table(latents: list[dict], summary: dict) -> None:
    """Table 1 view: one row per latent variable, then the summary."""
    print(f"{'no.':>4} {'var_mu':>12} {'mean_sigma2':>12} {'law':>8} {'kl':>8} {'recon_gain':>11}  active")
    for r in latents:
        print(f"{r['latent']:>4} {r['var_mu']:>12.6g} {r['mean_sigma2']:>12.6g} {r['law']:>8.4f} "
              f"{r['kl']:>8.4f} {r['recon_gain']:>11.4f}  {'yes' if r['active'] else 'NO'}")
    print()
    for k, v in summary.items():
        print(f"{k:>18}: {v:.6g}" if isinstance(v, float) else f"{k:>18}: {v}")
    if not summary.get("settled", True):
        print("not settled: the active set or the law residual still moved over the last evaluations; "
              "raise --epochs or relax --settle-patience / --settle-min-steps / --settle-law-tol")


def cmd_train(args: argparse.Namespace) -> int:
    from .sampling import save_sample_grid
    from .trial import TrialRun

    cfg = _trial_config(args)
    out = Path(args.out) if args.out else None
    run = TrialRun(cfg)
    for m in run.epochs():
        line = f"epoch {m['epoch']:>4}/{cfg.epochs}  loss {m['train_loss']:9.3f}  {m['epoch_time']:.2f}s"
        if m["evaluated"]:
            line += f"  active {m['n_active']}/{cfg.latent_dim}  law_residual_max {m['law_residual_max']:.3f}"
            line += f"  settled at step {m['settled_step']}" if m["settled"] else "  not settled"
        print(line, file=sys.stderr, flush=True)
    result = run.result()
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        torch.save({"config": cfg.model_dump(), "model": run.model.state_dict()}, out / "model.pt")
        save_sample_grid(run.model, [r["active"] for r in result.latents], out / "samples.png", seed=cfg.seed)
        (out / "result.json").write_text(json.dumps(_as_json(result), indent=2))
    if args.json:
        print(json.dumps(_as_json(result)))
    else:
        _print_table(result.latents, result.summary)
    return 0


def _as_json(result) -> dict:
    return {**result.summary, "config": result.config.model_dump(), "latents": result.latents,
            "seconds_per_epoch": [h["epoch_time"] for h in result.history]}


# --- entry point --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="vaesweep", description="Hyperparameter studies of VAE variable collapse.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    train = sub.add_parser("train", help="train one VAE (no Ray) and print the Table 1 view")
    _add_trial_flags(train)
    train.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    train.add_argument("--out", help="save model.pt, result.json and samples.png (Fig. 3) here")
    train.set_defaults(func=cmd_train)

    from . import study_cli  # the study commands: run, status (kept beside the study code)
    study_cli.add_commands(sub)
    from . import fid_cli  # the FID-proxy between two image sets (kept beside vaesweep/fid.py)
    fid_cli.add_commands(sub)
    from . import report_cli  # the report command (charts from analysis/)
    report_cli.add_commands(sub)
    from . import data_cli  # data fetch mnist: the data cache (kept beside vaesweep/fetch.py)
    data_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .results import StudyFolderError
    from .spec import SpecError
    from .trial import TrainingDiverged

    try:
        args = build_parser().parse_args(argv)
        return args.func(args)
    except (UsageError, DataError, SpecError, StudyFolderError, TrainingDiverged) as err:
        print(f"vaesweep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vaesweep: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
