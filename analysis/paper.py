"""The paper, side by side: the paper's own numbers beside this study's, over the seeds.

The paper's settings are a VAE with latent dimension 16 and lambda = 1, the plain loss (no warm-up,
free bits or KL target), in two architectures:

- dense (784-256-64-32-16): Table 1 lists Var[mu_i] ("variance") and mean sigma_i^2 of every latent
  variable at the end of training; 8 of the 16 are active (``PAPER_TABLE1`` below, copied from it).
  Fig. 3 decodes prior samples and the same samples with the inactive variables zeroed: "they are
  indistinguishable";
- conv (the encoder of Fig. 4): "only 3 of the 16 latent variables are zeroed out" (Sec. 3.1),
  so 13 are active.

``paper_trials(trials)`` picks the finished trials of a study with those settings; they are compared like with
like, one group per architecture and training choices (``recipe``: the init or preset and any choice off its
default, e.g. 'dense · init torch' beside 'dense · init keras'), each group's seeds counted;
``paper_chart(trials, latents, epochs)`` returns the section: per quantity the paper's number, this
study's mean ± sd and min..max over the seeds, the data set, the minibatches trained and the split
the metric was computed on, and a one-sentence reading (agrees / differs, by how much). Trials with
a ``settled`` column count only when settled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from vaesweep.config.trial import SPRITES, TrialConfig, recipe

from . import settled
from .chart import ACTIVE_COLOR, INACTIVE_COLOR, Chart, Study, new_figure, skip
from .design import fmt, with_defaults

KEY, TITLE = "paper", "The paper, side by side"
TABLE, SEEDS_TABLE = "paper_side_by_side", "paper_seeds"

# Table 1 of the paper (dense, latent dimension 16): (variance = Var_X[mu_i], mean sigma_i^2(X)), i = 0..15.
PAPER_TABLE1 = pd.DataFrame(
    [
        (8.847272e-05, 0.9802212),
        (0.00011756, 0.99551463),
        (6.665453e-05, 0.98517334),
        (0.97417927, 0.008741336),
        (0.99131817, 0.006186147),
        (1.0012343, 0.010142518),
        (0.94563377, 0.057169348),
        (0.00015841, 0.98205334),
        (0.94694275, 0.033207607),
        (0.00014789, 0.98505586),
        (1.0040375, 0.018151345),
        (0.98543876, 0.023995731),
        (0.000107441, 0.9829797),
        (4.5068125e-05, 0.998983),
        (0.00010853, 0.9604088),
        (0.9886378, 0.044405878),
    ],
    columns=["var_mu", "mean_sigma2"],
)
# its red rows (variance ~1e-4) are exactly those at or below our active_threshold (0.01)
PAPER_TABLE1["active"] = PAPER_TABLE1["var_mu"] > TrialConfig.model_fields["active_threshold"].default
PAPER_TABLE1["law"] = PAPER_TABLE1["var_mu"] + PAPER_TABLE1["mean_sigma2"]
CONV_ACTIVE = 16 - 3  # Sec. 3.1: "only 3 of the 16 latent variables are zeroed out"

# The paper's settings; a trial matches when it has all of them (and its arch is dense or conv).
PAPER_SETTINGS = {"latent_dim": 16, "lam": 1.0, "warmup_steps": 0, "free_bits": 0.0, "capacity_max": None}
PAPER_HIDDEN, PAPER_CONV_WIDTH = (256, 64, 32), 32  # Table 1's 784-256-64-32-16; Fig. 4's 32 channels
MIN_SEEDS = 3
# Official train / eval split sizes (vaesweep/engine/data.py), to state what a metric was computed on.
SPLIT_SIZES = {
    "mnist5k": (4000, 1000),
    "mnist": (60000, 10000),
    "fashion_mnist": (60000, 10000),
    "cifar10": (50000, 10000),
    **{name: (60000, 10000) for name in SPRITES},  # generated: vaesweep/engine/sprites.py
}
# How close counts as agreeing (stated in every reading):
LAW_CLOSE = 0.05  # a variance near 1 on 1,000 eval images has a sampling error of sqrt(2/1000) = 0.045
VAR_MU_FACTOR = 10.0  # an inactive Var[mu] ~ 1e-4: the same order of magnitude
FID_CLOSE = 0.05  # zeroing moves the FID-proxy by <= 5% of fid_prior (the same z: no sampling noise)
GREY_LEVEL = 1 / 255  # one 8-bit grey level: a mean pixel change below it cannot be seen


@dataclass(frozen=True)
class Row:
    """One quantity of the paper: where it is, what it is, its value, and how close counts as agreeing.

    ``rule``: 'range' agrees when the paper's value lies within the seeds' min..max (counts);
    'abs' when |mean - paper| <= tol or within min..max; 'factor' when mean and paper are within a
    factor ``tol``; 'below' when mean <= tol; 'relative' when |mean| <= tol times the mean of
    column ``scale``."""

    where: str
    quantity: str
    arch: str
    column: str  # of the per-seed table
    paper: float
    paper_text: str
    rule: str
    tol: float = 0.0
    spec: str = ".3g"
    scale: str | None = None


def _rows() -> list[Row]:
    """The quantities compared, one a row of Row's fields: where, quantity, arch, column of the per-seed table, the
    paper's value and how the paper gives it, the rule, its tolerance and the number format (then ``scale``)."""
    t1 = PAPER_TABLE1
    act, ina = t1[t1["active"]], t1[~t1["active"]]
    n_active, law_low, law_high = int(t1["active"].sum()), act["law"].min(), act["law"].max()
    sigma2_low, sigma2_high, var_mu_high = ina["mean_sigma2"].min(), ina["mean_sigma2"].max(), ina["var_mu"].max()
    zeroing = "≈ 0 (indistinguishable)"
    # fmt: off
    table = [
        ("Table 1", "active variables (of 16)", "dense", "n_active",
            n_active, f"{n_active} of 16", "range", 0.0, ".3g"),
        ("Table 1", "lowest law (Var[μ] + mean σ²) of an active variable", "dense", "law_active_min",
            law_low, f"{law_low:.3f}", "abs", LAW_CLOSE, ".3f"),
        ("Table 1", "highest law of an active variable", "dense", "law_active_max",
            law_high, f"{law_high:.3f}", "abs", LAW_CLOSE, ".3f"),
        ("Table 1", "lowest mean σ² of an inactive variable", "dense", "sigma2_inactive_min",
            sigma2_low, f"{sigma2_low:.3f}", "abs", LAW_CLOSE, ".3f"),
        ("Table 1", "highest mean σ² of an inactive variable", "dense", "sigma2_inactive_max",
            sigma2_high, f"{sigma2_high:.3f}", "abs", LAW_CLOSE, ".3f"),
        ("Table 1", "largest Var[μ] of an inactive variable", "dense", "var_mu_inactive_max",
            var_mu_high, f"{var_mu_high:.2g}", "factor", VAR_MU_FACTOR, ".2g"),
        ("Fig. 3", "FID-proxy change from zeroing the inactive variables (fid_zeroed − fid_prior)", "dense",
            "fid_zeroing_change", 0.0, zeroing, "relative", FID_CLOSE, ".3g", "fid_prior"),
        ("Fig. 3", "mean pixel change from zeroing the inactive variables (images in [0, 1])", "dense",
            "fid_zeroed_pixel_change", 0.0, zeroing, "below", GREY_LEVEL, ".2g"),
        ("Sec. 3.1, Fig. 4", "active variables (of 16)", "conv", "n_active",
            CONV_ACTIVE, f"{CONV_ACTIVE} of 16", "range", 0.0, ".3g"),
    ]
    # fmt: on
    return [Row(*row) for row in table]


ROWS = _rows()


# --- which trials -----------------------------------------------------------------------------


def paper_trials(trials: pd.DataFrame) -> pd.DataFrame:
    """The finished trials with the paper's settings (dense or conv, latent 16, lambda 1, plain loss) on data the
    paper's digits compare with (not the generated sprites: their answer is k, analysis/known_dimension.py)."""
    df = with_defaults(trials)
    if "n_active" not in df:
        return df.iloc[:0]
    keep = df["arch"].isin(["dense", "conv"]) & df["n_active"].notna() & ~df["dataset"].isin(SPRITES)
    if "status" in df:
        keep &= df["status"] == "done"
    for field, value in PAPER_SETTINGS.items():
        keep &= df[field].isna() if value is None else np.isclose(df[field].astype(float), value)
    return df[keep].reset_index(drop=True)


def per_seed(matched: pd.DataFrame, latents: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """One row per matched trial: the numbers each row of the section summarises over the seeds."""
    out = matched[["trial_id", "arch", "dataset", "seed", "n_active"]].copy()
    out.insert(2, "recipe", [recipe(r) for r in matched.to_dict("records")])
    if len(latents) and "law" in latents:
        lat = latents[latents["trial_id"].isin(out["trial_id"])]
        act, ina = lat[lat["active"].astype(bool)], lat[~lat["active"].astype(bool)]
        stats = {
            "law_active_min": act.groupby("trial_id")["law"].min(),
            "law_active_max": act.groupby("trial_id")["law"].max(),
            "sigma2_inactive_min": ina.groupby("trial_id")["mean_sigma2"].min(),
            "sigma2_inactive_max": ina.groupby("trial_id")["mean_sigma2"].max(),
            "var_mu_inactive_max": ina.groupby("trial_id")["var_mu"].max(),
        }
        for name, s in stats.items():
            out[name] = out["trial_id"].map(s).astype(float)
    for col in ("fid_prior", "fid_zeroed", "fid_zeroed_pixel_change"):
        out[col] = matched[col].astype(float) if col in matched else np.nan
    out["fid_zeroing_change"] = out["fid_zeroed"] - out["fid_prior"]
    has_steps = len(epochs) and "step" in epochs
    steps = epochs.groupby("trial_id")["step"].max() if has_steps else pd.Series(dtype=float)
    out["minibatches"] = out["trial_id"].map(steps).astype(float)  # the step of the last epoch
    if settled.known(matched):
        out[settled.COLUMN] = ~settled.unsettled(matched)
    return out


# --- the section ------------------------------------------------------------------------------


def paper_chart(trials: pd.DataFrame, latents: pd.DataFrame, epochs: pd.DataFrame) -> Chart:
    """The section: the paper's number beside this study's per quantity, and a chart of both."""
    matched = paper_trials(trials)
    if not len(matched):
        return skip(
            KEY,
            TITLE,
            "No finished trial has the paper's settings (dense or conv, latent_dim 16, "
            "lam 1, no warm-up, free bits or KL target).",
        )
    seeds = per_seed(matched, latents, epochs)
    matched = matched.assign(recipe=seeds["recipe"].to_numpy())
    used, _ = settled.split(seeds)
    table = pd.DataFrame(
        [
            _row(r, used[(used["arch"] == r.arch) & (used["recipe"] == rec)], g)
            for (arch, rec), g in matched.groupby(["arch", "recipe"], sort=False)
            for r in ROWS
            if r.arch == arch
        ]
    )
    fig = _figure(used, latents) if len(used) else None
    reading = " ".join([_settled_sentence(seeds), _scale_sentence(matched, seeds), _agreement(table)])
    return Chart(KEY, TITLE, reading, fig, {TABLE: table, SEEDS_TABLE: seeds})


def _row(row: Row, s: pd.DataFrame, trials: pd.DataFrame) -> dict:
    """The row of ``row``: ``s`` the counted seeds of its arch, ``trials`` all its matched trials."""
    values = s[row.column].dropna() if row.column in s else pd.Series(dtype=float)
    n = len(values)
    mean = float(values.mean()) if n else np.nan
    sd = float(values.std(ddof=1)) if n > 1 else np.nan
    return {
        "in the paper": row.where,
        "arch": row.arch,
        "quantity": row.quantity,
        "paper value": row.paper_text,
        "this study": _mean_sd(mean, sd, n, row.spec),
        "mean": mean,
        "sd": sd,
        "min": float(values.min()) if n else np.nan,
        "max": float(values.max()) if n else np.nan,
        "seeds": n,
        "training choices": trials["recipe"].iloc[0],
        "data set": _data_text(trials),
        "minibatches": _steps_text(s["minibatches"]),
        "computed on": _eval_text(trials, row),
        "reading": _reading(row, values, s),
    }


def _mean_sd(mean: float, sd: float, n: int, spec: str) -> str:
    if not n:
        return "—"
    return format(mean, spec) + ("" if np.isnan(sd) else f" ± {format(sd, spec)}")


def _reading(row: Row, values: pd.Series, s: pd.DataFrame) -> str:
    n = len(values)
    if not n:
        return _missing(row, s)
    mean, lo, hi = float(values.mean()), float(values.min()), float(values.max())
    f = lambda v: format(v, row.spec)  # noqa: E731
    ours = f"{f(mean)} (min..max {f(lo)}..{f(hi)})" if n > 1 else f(mean)
    within = lo <= row.paper <= hi
    if row.rule == "range":
        verdict = (
            f"agrees: the paper's {row.paper_text} lies within this study's {f(lo)}..{f(hi)}"
            if within
            else f"differs: {f(mean)} on average against the paper's {row.paper_text}, "
            f"{mean - row.paper:+.2g} variables"
        )
    elif row.rule == "abs":
        near = abs(mean - row.paper) <= row.tol
        how = (
            f"within {row.tol:.2g}"
            if near
            else f"more than {row.tol:.2g}, but the paper's value lies within the seeds' min..max"
            if within
            else f"more than {row.tol:.2g}"
        )
        verdict = (
            f"{'agrees' if near or within else 'differs'}: {ours} against the paper's {row.paper_text}, "
            f"{mean - row.paper:+.2g} ({how})"
        )
    elif row.rule == "below":
        close = mean <= row.tol
        verdict = (
            f"{'agrees' if close else 'differs'}: zeroing changes a pixel by {ours} on average, "
            f"{'below' if close else 'above'} one grey level (1/255 = {GREY_LEVEL:.2g})"
            + (": indistinguishable, as in the paper" if close else "; the paper saw no difference")
        )
    elif row.rule == "factor":
        ratio = mean / row.paper if row.paper else np.inf
        close = 1 / row.tol <= ratio <= row.tol
        verdict = (
            f"{'agrees' if close else 'differs'}: {ours} against the paper's {row.paper_text}, "
            f"{ratio:.2g} times it ({'within' if close else 'beyond'} a factor of {row.tol:g})"
        )
    else:  # relative to another column's mean: the FID-proxy change against the FID-proxy itself
        base = float(s[row.scale].mean())
        share = abs(mean) / base if base else np.inf
        close = share <= row.tol
        verdict = (
            f"{'agrees' if close else 'differs'}: zeroing moves the FID-proxy by {ours}, "
            f"{share:.1%} of fid_prior {base:.3g} ({'within' if close else 'more than'} {row.tol:.0%})"
            + (": indistinguishable, as in the paper" if close else "; the paper saw no difference")
        )
    if n < MIN_SEEDS:
        verdict += f"; only {n} seed{'s' if n > 1 else ''}, fewer than {MIN_SEEDS}"
    return verdict + "."


def _missing(row: Row, s: pd.DataFrame) -> str:
    if not len(s):
        return "No settled seed to compare."
    if row.column.startswith("fid_"):
        return "Not measured: these trials have no FID-proxy scores (fid: false)."
    if "inactive" in row.column:
        return "No seed has an inactive variable, so there is nothing to compare."
    return "Not measured: these trials have no per-variable results (latents table)."


def _settled_sentence(seeds: pd.DataFrame) -> str:
    parts = []
    for (arch, rec), g in seeds.groupby(["arch", "recipe"], sort=False):
        arch = f"{arch} ({rec})"
        n = len(g)
        if not settled.known(g):
            parts.append(f"{arch}: {n} seed{'s' if n != 1 else ''}, settled status unknown (no settled column)")
            continue
        left = int(settled.unsettled(g).sum())
        parts.append(
            f"{arch}: {n - left} seed{'s' if n - left != 1 else ''} counted"
            + (f", {left} of {n} seeds left out: not settled" if left else ", all settled")
        )
    few = [
        f"{arch} ({rec})"
        for (arch, rec), g in seeds.groupby(["arch", "recipe"], sort=False)
        if len(settled.split(g)[0]) < MIN_SEEDS
    ]
    warn = (
        f" Fewer than {MIN_SEEDS} seeds for {' and '.join(few)}: the spread over seeds is not reliable." if few else ""
    )
    return "Trials with the paper's settings (latent 16, λ = 1): " + "; ".join(parts) + "." + warn


def _scale_sentence(matched: pd.DataFrame, seeds: pd.DataFrame) -> str:
    """The paper trained on the 60,000 MNIST digits; what this study trained on, and for how long."""
    parts = []
    for arch, g in matched.groupby("arch", sort=False):
        steps = seeds.loc[seeds["arch"] == arch, "minibatches"]
        net = ""
        if arch == "dense" and set(g["hidden"].map(tuple)) != {PAPER_HIDDEN}:
            net = f" with hidden widths {', '.join(sorted({fmt(h) for h in g['hidden']}))} (paper: 256-64-32)"
        if arch == "conv" and set(g["conv_width"]) != {PAPER_CONV_WIDTH}:
            net = f" with conv_width {', '.join(sorted({fmt(w) for w in g['conv_width']}))} (paper: 32)"
        parts.append(
            f"the {arch} trials{net} on {_data_text(g)} for {_steps_text(steps)} minibatches "
            f"of {'/'.join(sorted({fmt(b) for b in g['batch_size']}))}"
        )
    return (
        "The paper trained on the full MNIST training set (60,000 digits) and computed Table 1 over the "
        "full data set, training length not stated; this study trained "
        + "; ".join(parts)
        + ", and computed every metric on the eval split (column 'computed on')."
    )


def _agreement(table: pd.DataFrame) -> str:
    agree = table["reading"].str.startswith("agrees")
    measured = ~table["reading"].str.startswith(("Not measured", "No "))
    return f"{int(agree.sum())} of {int(measured.sum())} measured quantities agree with the paper (table below)."


def _data_text(trials: pd.DataFrame) -> str:
    """'mnist5k (4,000 train images)' or 'mnist (the first 6,000 of 60,000 train images)'."""
    out = []
    for (name, cap), _ in trials.groupby(["dataset", trials["max_train"].fillna(-1)], sort=True):
        total = SPLIT_SIZES.get(name, (None, None))[0]
        if cap < 0:
            out.append(f"{name} ({total:,} train images)" if total else f"{name} (all its train images)")
        elif total and cap < total:
            out.append(f"{name} (the first {int(cap):,} of {total:,} train images)")
        else:
            out.append(f"{name} ({int(min(cap, total or cap)):,} train images)")
    return "; ".join(out)


def _eval_text(trials: pd.DataFrame, row: Row) -> str:
    """The split (and its size) the row's metric was computed on."""

    def size(n) -> str:
        return "unknown number of" if n is None else f"{int(n):,}"

    sizes = set()
    for name, cap, fid_n in zip(trials["dataset"], trials["max_eval"], trials["fid_samples"]):
        total = SPLIT_SIZES.get(name, (None, None))[1]
        if row.column.startswith("fid_"):  # fid.scorer_for takes the first fid_samples eval images
            n = fid_n if total is None else min(fid_n, total)
            sizes.add(f"{size(n)} prior samples against the first {size(n)} eval images")
        else:
            n = total if pd.isna(cap) else int(cap) if total is None else min(int(cap), total)
            sizes.add(f"eval split, {size(n)} images")
    return " / ".join(sorted(sizes))


def _steps_text(steps: pd.Series) -> str:
    steps = steps.dropna()
    if not len(steps):
        return "unknown"
    lo, hi = int(steps.min()), int(steps.max())
    return f"{lo:,}" if lo == hi else f"{lo:,}..{hi:,}"


# --- the figure -------------------------------------------------------------------------------


def _figure(used: pd.DataFrame, latents: pd.DataFrame):
    """Left: active variables per seed against the paper's count. Right (dense): Table 1 as points,
    Var[μ] against mean σ² of every variable of every seed, the paper's 16 as black crosses."""
    dense_ids = used.loc[used["arch"] == "dense", "trial_id"]
    has_latents = len(latents) and "var_mu" in latents
    lat = latents[latents["trial_id"].isin(dense_ids)] if has_latents else pd.DataFrame()
    fig, axes = new_figure(2 if len(lat) else 1, (5.2, 4.0))
    ax = axes[0]
    groups = [(a, r) for a in ("dense", "conv") for r in sorted(set(used.loc[used["arch"] == a, "recipe"]))]
    paper = {"dense": int(PAPER_TABLE1["active"].sum()), "conv": CONV_ACTIVE}
    jitter = np.random.default_rng(0)
    for x, (arch, rec) in enumerate(groups):
        counts = used.loc[(used["arch"] == arch) & (used["recipe"] == rec), "n_active"].astype(float)
        ax.scatter(
            x + jitter.uniform(-0.12, 0.12, len(counts)),
            counts,
            color=ACTIVE_COLOR,
            alpha=0.7,
            zorder=3,
            label="this study, one point per seed" if x == 0 else None,
        )
        ax.hlines(paper[arch], x - 0.3, x + 0.3, color="black", lw=2, label="paper" if x == 0 else None)
    ax.set_xticks(range(len(groups)), [f"{a}\n{r.replace(', ', chr(10))}" for a, r in groups], fontsize=7)
    ax.set(
        xlim=(-0.6, len(groups) - 0.4),
        ylim=(0, 16.5),
        ylabel="active variables (of 16)",
        title="Active variables, latent 16, λ = 1",
    )
    ax.legend(fontsize=8, loc="lower right")
    if len(lat):
        ax = axes[1]
        for active, color, label in ((True, ACTIVE_COLOR, "active"), (False, INACTIVE_COLOR, "inactive")):
            sub = lat[lat["active"].astype(bool) == active]
            ax.scatter(
                sub["var_mu"].clip(lower=1e-7),
                sub["mean_sigma2"],
                s=14,
                alpha=0.5,
                color=color,
                label=f"this study, {label}",
            )
        ax.scatter(
            PAPER_TABLE1["var_mu"], PAPER_TABLE1["mean_sigma2"], marker="x", color="black", s=30, label="paper, Table 1"
        )
        ax.set_xscale("log")
        ax.set(xlabel="Var[μ] (Table 1 'variance')", ylabel="mean σ²", title="Table 1, dense: every variable")
        ax.legend(fontsize=8, loc="center right")
    fig.suptitle(TITLE)
    return fig


def section(study: Study) -> Chart | None:
    """Only for a study with trials at the paper's settings: its numbers beside ours."""
    t = study.tables
    return paper_chart(t.trials, t.latents, t.epochs) if len(paper_trials(t.trials)) else None
