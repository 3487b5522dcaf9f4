"""``python -m vaesweep train``: one VAE, no Ray, the Table 1 view of its latent variables."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from vaesweep.config.errors import UsageError
from vaesweep.config.trial import TrialConfig, one_line
from vaesweep.engine.checkpoints import save_model
from vaesweep.engine.sampling import save_sample_grid
from vaesweep.engine.trial import TrialRun


def _trial_config(args: argparse.Namespace) -> TrialConfig:
    given = {k: getattr(args, k) for k in TrialConfig.model_fields if getattr(args, k, None) is not None}
    try:
        return TrialConfig(**given)
    except ValidationError as err:
        field, problem = one_line(err).split(":", 1)
        raise UsageError(f"--{field.replace('_', '-')}:{problem}") from None


def _print_table(latents: list[dict], summary: dict) -> None:
    """Table 1 view: one row per latent variable, then the summary."""
    print(f"{'no.':>4} {'var_mu':>12} {'mean_sigma2':>12} {'law':>8} {'kl':>8} {'recon_gain':>11} {'mi_i':>7}  active")
    for r in latents:
        print(
            f"{r['latent']:>4} {r['var_mu']:>12.6g} {r['mean_sigma2']:>12.6g} {r['law']:>8.4f} "
            f"{r['kl']:>8.4f} {r['recon_gain']:>11.4f} {r.get('mi_i', float('nan')):>7.3f}  "
            f"{'yes' if r['active'] else 'NO'}"
        )
    print()
    for k, v in summary.items():
        print(f"{k:>18}: {v:.6g}" if isinstance(v, float) else f"{k:>18}: {v}")
    if not summary.get("settled", True):
        print(
            "not settled: the active set or the law residual still moved over the last evaluations; "
            "raise --epochs or relax --settle-patience / --settle-min-steps / --settle-law-tol"
        )


def cmd_train(args: argparse.Namespace) -> int:
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
        save_model(out, cfg, run.model)
        save_sample_grid(run.model, [r["active"] for r in result.latents], out / "samples.png", seed=cfg.seed)
        (out / "result.json").write_text(json.dumps(_as_json(result), indent=2))
    if args.json:
        print(json.dumps(_as_json(result)))
    else:
        _print_table(result.latents, result.summary)
    return 0


def _as_json(result) -> dict:
    return {
        **result.summary,
        "config": result.config.model_dump(),
        "latents": result.latents,
        "seconds_per_epoch": [h["epoch_time"] for h in result.history],
    }
