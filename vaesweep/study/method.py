"""The driver of ``experiment: method`` (vaesweep/experiments/method.py): Sec. 7's phases as ordinary trials.

``run_method(spec, out)`` runs, per fixed setting of the spec (its grid fields and seed):

  1. the constrained Optuna search for lambda* (``tuner.run_search`` on a derived ``search: optuna`` spec, at
     ``method.search_latent_dim``); lambda* is read from settled trials only (``searcher.lambda_star``): a trial
     whose collapse had not settled counts neither as feasible nor as infeasible, and is counted in n_unsettled;
  2. one trial per round at lambda*, the latent dimension chosen by ``grow_latent`` from the recorded tables
     (the phase-1 trial of lambda* is the round at ``search_latent_dim``, never trained twice);
  3. one trial at lambda* and the onset latent dimension with ``fid: true, two_stage: true``;
  4. the advice, in ``method.parquet`` (one row per setting) and ``method_trials.parquet`` (the evidence trials).

Every trial is recorded in the study's usual tables. Each phase runs in a Ray experiment folder of its own under
``tune/``: phase 1 ``tune/search`` (run_search's: every setting's search in one Tuner, side by side), phase 2
``tune/capacity,<setting>,latent_dim=<d>``, phase 3 ``tune/fid,<setting>``. A killed driver, run again, restores
each folder (tuner.build_tuner): finished trials are not re-run, an unfinished one resumes from its checkpoint,
and the next round is decided from the tables. The phase of a trial is read from its config: two_stage -> phase 3;
latent_dim == search_latent_dim -> phase 1; else phase 2.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from vaesweep.config.folder import LAMBDA_STAR, METHOD, METHOD_TRIALS, counts
from vaesweep.config.spec import StudySpec
from vaesweep.experiments.method import (
    Advice,
    Capacity,
    MethodSettings,
    advise,
    grow_latent,
)
from vaesweep.study.searcher import lambda_star, setting_key
from vaesweep.study.tables import load_trials
from vaesweep.study.tuner import build_tuner, run_search


def run_method(spec: StudySpec, out: Path, quiet: bool = False) -> None:
    """Run (or continue) the method's four phases for every setting of ``spec``; writes method.parquet."""
    m: MethodSettings = spec.kind_settings
    run_search(search_spec(spec), out, quiet)  # phase 1, every setting
    write_tables(spec, out)
    for setting in spec.settings():
        lam = _lam_star(m, load_trials(out), setting)
        if math.isnan(lam):
            continue
        while (step := capacity(m, load_trials(out), setting, lam)).next_dim is not None:  # phase 2, round by round
            d = step.next_dim
            build_tuner(
                trial_spec(spec, setting, lam, d), out, quiet, folder=f"capacity,{setting_key(setting)},latent_dim={d}"
            ).fit()
            if d not in _n_active(m, load_trials(out), setting, lam):  # the trial failed: no answer to build on
                break
        final = step.onset or step.following
        if step.next_dim is None and final is not None:  # phase 3
            build_tuner(
                trial_spec(spec, setting, lam, final, scored=True), out, quiet, folder=f"fid,{setting_key(setting)}"
            ).fit()
        write_tables(spec, out)


# --- the trials of each phase ------------------------------------------------------------------------------------


def search_spec(spec: StudySpec) -> StudySpec:
    """Phase 1: the study as a constrained Optuna search over lambda at ``search_latent_dim``."""
    m: MethodSettings = spec.kind_settings
    low, high = m.lam_range
    return _derived(
        spec,
        base={"latent_dim": m.search_latent_dim, "epochs": m.epochs, "fid": False},
        space={**_dump(spec)["space"], "lam": {"loguniform": [low, high]}},
        search={
            "type": "optuna",
            "num_samples": m.search_trials,
            "start": [{"lam": high}],
            "sampler": {"type": "gp", "n_startup_trials": 1, "seed": 0},
        },
    )


def trial_spec(
    spec: StudySpec, setting: dict[str, Any], lam: float, latent_dim: int, scored: bool = False
) -> StudySpec:
    """One trial of ``setting`` at ``lam`` and ``latent_dim``: phase 2's round, or (``scored``) phase 3's."""
    m: MethodSettings = spec.kind_settings
    fixed = {k: v for k, v in setting.items() if k != "seed"}
    return _derived(
        spec,
        base={
            **fixed,
            "latent_dim": latent_dim,
            "lam": lam,
            "epochs": m.epochs,
            "fid": scored,
            **({"two_stage": True} if scored else {}),
        },
        space={},
        seeds=[setting["seed"]],
        search={"type": "grid"},
    )


def _dump(spec: StudySpec) -> dict:
    return spec.model_dump(mode="json")


def _derived(spec: StudySpec, base: dict, **changes) -> StudySpec:
    """An ordinary ``experiment: train`` spec from the method's, with ``base`` added and ``changes``; unpacked
    (a packed trial does not run the second stage)."""
    raw = _dump(spec)
    raw.pop(spec.experiment, None)
    raw.update(experiment="train", pack="off", base={**raw["base"], **base}, **changes)
    return StudySpec(**raw)


def phase_of(trials: pd.DataFrame, m: MethodSettings) -> pd.Series:
    """Each trial's phase (1, 2, 3), read from its config (see the module's docstring)."""
    two_stage = trials["two_stage"].eq(True) if "two_stage" in trials else pd.Series(False, index=trials.index)
    first = trials["latent_dim"].eq(m.search_latent_dim)
    return pd.Series(np.where(two_stage, 3, np.where(first, 1, 2)), index=trials.index)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple, np.ndarray)) or isinstance(b, (list, tuple, np.ndarray)):
        return list(a) == list(b)
    return a == b


def of_setting(trials: pd.DataFrame, setting: dict[str, Any]) -> pd.DataFrame:
    """The trials of one fixed setting (all its grid values and its seed)."""
    if not len(trials):
        return trials
    keep = trials.apply(lambda r: all(k in r and _same(r[k], v) for k, v in setting.items()), axis=1)
    return trials[keep.astype(bool)]


def _phase(m: MethodSettings, trials: pd.DataFrame, setting: dict[str, Any], phase: int) -> pd.DataFrame:
    mine = of_setting(trials, setting)
    return mine[phase_of(mine, m) == phase] if len(mine) else mine


def _search_row(m: MethodSettings, trials: pd.DataFrame, setting: dict[str, Any]) -> dict:
    """Phase 1's answer for ``setting``: searcher.lambda_star's row (lam_star NaN when no settled trial passed)."""
    found = lambda_star(_phase(m, trials, setting, 1), [])
    return found.iloc[0].to_dict() if len(found) else {"lam_star": math.nan}


def _lam_star(m: MethodSettings, trials: pd.DataFrame, setting: dict[str, Any]) -> float:
    return float(_search_row(m, trials, setting)["lam_star"])


def _n_active(m: MethodSettings, trials: pd.DataFrame, setting: dict[str, Any], lam: float) -> dict[int, int]:
    """Phase 2's results so far: latent dimension -> active variables of the finished trials at lambda*,
    with the phase-1 trial of lambda* (at search_latent_dim)."""
    mine = of_setting(trials, setting)
    if not len(mine):
        return {}
    at = mine[(phase_of(mine, m) < 3) & (mine["status"] == "done") & np.isclose(mine["lam"], lam)]
    at = at.dropna(subset=["n_active"])
    return {int(r["latent_dim"]): int(r["n_active"]) for _, r in at.iterrows()}


def capacity(m: MethodSettings, trials: pd.DataFrame, setting: dict[str, Any], lam: float) -> Capacity:
    return grow_latent(
        _n_active(m, trials, setting, lam), m.start_latent_dim, m.max_latent_dim, m.follow_fraction, m.resolution
    )


# --- phase 4: the tables -------------------------------------------------------------------------------------------


def label(spec: StudySpec, setting: dict[str, Any]) -> str:
    """How the advice names a setting: its grid values (e.g. "dense"), with the seed when there are several."""
    shown = [str(v) for k, v in setting.items() if k != "seed"]
    if len(spec.seed_list()) > 1:
        shown.append(f"seed {setting['seed']}")
    return ", ".join(shown) or str(spec.trial_base().get("dataset", "mnist5k"))


METHOD_COLUMNS = (
    "setting",
    "lam_below",
    "lam_star",
    "lam_star_trial",
    "latent_following",
    "latent_onset",
    "n_active_onset",
    "fid_recon",
    "fid_prior",
    "fid_two_stage",
    "fid_trial",
    "verdict",
    "advice",
    "n_trials",
    "n_unsettled",
    "n_unsettled_search",
)
FID = ("fid_recon", "fid_prior", "fid_two_stage")


def method_row(spec: StudySpec, trials: pd.DataFrame, setting: dict[str, Any]) -> dict:
    """One row of method.parquet: lambda* and its bracket (lam_below: the largest settled lambda that failed the
    laws), the capacity (the last latent dimension followed, the onset of sparsity and n_active there), the three
    FID-proxy scores, the advice, and how many of the setting's finished trials had not settled."""
    m: MethodSettings = spec.kind_settings
    search = _search_row(m, trials, setting)
    lam = float(search["lam_star"])
    cap = capacity(m, trials, setting, lam) if not math.isnan(lam) else None
    cap = cap if cap is not None and cap.next_dim is None else None  # phase 2 finished
    scored = _phase(m, trials, setting, 3)
    scored = scored[scored["status"] == "done"] if len(scored) else scored
    last = scored.iloc[-1] if len(scored) else {}
    fid = {k: float(last[k]) if k in last and pd.notna(last[k]) else math.nan for k in FID}
    advice: Advice = advise(label(spec, setting), m, lam, cap, **fid)
    mine = of_setting(trials, setting)
    done = mine[mine["status"] == "done"] if len(mine) else mine
    unsettled = ~counts(done)
    return {
        "dataset": spec.trial_base().get("dataset", "mnist5k"),
        **setting,
        "setting": label(spec, setting),
        "lam_below": search.get("lam_below", math.nan),
        "lam_star": lam,
        "lam_star_trial": search.get("lam_star_trial"),
        "latent_following": cap.following if cap else None,
        "latent_onset": cap.onset if cap else None,
        "n_active_onset": cap.n_active if cap else None,
        **fid,
        "fid_trial": last["trial_id"] if len(scored) else None,
        "verdict": advice.verdict,
        "advice": advice.sentence,
        "n_trials": len(mine),
        "n_unsettled": int(unsettled.sum()),
        "n_unsettled_search": search.get("n_unsettled", math.nan),
    }


def evidence(spec: StudySpec, trials: pd.DataFrame) -> pd.DataFrame:
    """Every trial of the method with its setting and phase: the evidence behind method.parquet."""
    m: MethodSettings = spec.kind_settings
    parts = []
    for setting in spec.settings():
        mine = of_setting(trials, setting)
        if len(mine):
            parts.append(mine.assign(setting=label(spec, setting), phase=phase_of(mine, m)))
    if not parts:
        return pd.DataFrame(columns=["trial_id", "setting", "phase"])
    cols = [
        "trial_id",
        "setting",
        "phase",
        "status",
        "lam",
        "latent_dim",
        "n_active",
        "law_residual_max",
        "mean_mu_abs_max",
        "kl_working",
        "settled",
        "fid_recon",
        "fid_prior",
        "fid_two_stage",
    ]
    df = pd.concat(parts, ignore_index=True)
    df = df[[c for c in cols if c in df]]
    return df.sort_values(["setting", "phase", "latent_dim", "lam"]).reset_index(drop=True)


def write_tables(spec: StudySpec, out: Path) -> pd.DataFrame:
    """method.parquet and method_trials.parquet from the recorded tables, and lambda_star.parquet from the
    phase-1 trials only (run_search's reads every trial of the study)."""
    m: MethodSettings = spec.kind_settings
    trials = load_trials(out)
    table = pd.DataFrame([method_row(spec, trials, s) for s in spec.settings()])
    dims = ["latent_following", "latent_onset", "n_active_onset"]
    table[dims] = table[dims].astype("Int64")  # None where phase 2 has no answer
    table.to_parquet(out / METHOD, index=False)
    evidence(spec, trials).to_parquet(out / METHOD_TRIALS, index=False)
    first = trials[phase_of(trials, m) == 1]
    cols = [c for c in ("dataset", *spec.settings()[0]) if c in first]
    lambda_star(first, cols).to_parquet(out / LAMBDA_STAR, index=False)
    return table
