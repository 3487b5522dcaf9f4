"""The Fig. 7 chart of the noise experiment (Sec. 5, vaesweep.engine.noise), from a study's epochs table.

    plot_noise_experiment(load_study("runs/noise").epochs, "fig7.png")

Per trial, two panels over the epochs from the end of the base phase on: the chosen variable's
reconstruction gain (with the noise, and decoding the means) and KL in nats per image, with the
noise sigma shaded behind them (symlog scale: the gain < KL crossing and the collapse happen
near zero); below, its var_mu and mean_sigma2. The phases (noise rising,
held, recovery) are tinted and the threshold (gain < KL), collapse and revival epochs marked.
The experiment degrades a variable of a trained model, so the base phase's collapse should have
settled first (vaesweep/engine/settle.py): each trial's title and the events table say whether it had.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import settled
from .chart import Chart, Study, new_figure, skip

PHASE_COLORS = {"noise_rising": "#fde0c5", "noise_held": "#f9b98c", "recovery": "#d4ecd4"}
EVENTS = (
    ("noise_threshold_epoch", "gain < KL", "tab:red"),
    ("noise_collapsed_epoch", "collapsed", "black"),
    ("noise_revived_epoch", "revived", "tab:green"),
)
NEEDED = ("epoch", "phase", "noise_sigma", "noise_gain", "noise_kl", "noise_var_mu", "noise_mean_sigma2")


def noise_chart(epochs: pd.DataFrame) -> Chart:
    """The Fig. 7 chart as a report ``Chart`` (skipped with a note when the study is no noise experiment)."""
    key, title = "fig7_noise", "The noise experiment (Sec. 5, Fig. 7)"
    missing = [c for c in NEEDED if c not in epochs]
    if missing:
        return skip(key, title, "the study is not an experiment: noise study (no noise_* columns).")
    groups = list(epochs.groupby("trial_id")) if "trial_id" in epochs else [("", epochs)]
    fig, axes = new_figure(2 * len(groups), panel_size=(13, 3.5), ncols=1)
    for n, (trial_id, df) in enumerate(groups):
        _plot_trial(axes[2 * n], axes[2 * n + 1], df.sort_values("epoch"), str(trial_id))
    return Chart(key, title, _reading(epochs), fig, {"noise_events": _events(epochs)})


def fig7(tables) -> Chart:
    """The report's chart of the noise kind (vaesweep/experiments/noise.py), from the study's tables."""
    return noise_chart(tables.epochs)


def plot_noise_experiment(epochs: pd.DataFrame, path: str | Path) -> Path:
    """Write the Fig. 7-style chart of every noise-experiment trial in ``epochs`` to ``path``."""
    chart = noise_chart(epochs)
    if chart.skipped:
        raise ValueError(
            f"epochs table has no {', '.join(c for c in NEEDED if c not in epochs)}; "
            "give the epochs of an experiment: noise study"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    chart.figure.savefig(path, dpi=110)
    return path


def _events(epochs: pd.DataFrame) -> pd.DataFrame:
    cols = [c for c, _, _ in EVENTS if c in epochs]
    if not cols or "trial_id" not in epochs:
        return pd.DataFrame()
    events = epochs.groupby("trial_id")[cols].max().reset_index()
    if settled.known(epochs):
        events["base_settled"] = events["trial_id"].map({t: _base_settled(g) for t, g in epochs.groupby("trial_id")})
    return events


def _base_settled(df: pd.DataFrame) -> bool:
    """Whether the collapse had settled at the end of the base phase, before any noise."""
    base = df[df["phase"] == "base"].sort_values("epoch")
    return bool(len(base)) and not settled.flag(base.iloc[-1])


def _reading(epochs: pd.DataFrame) -> str:
    ev = _events(epochs)
    if not len(ev):
        return "The chosen variable's gain, KL and variances along the noise phases."
    r = ev.iloc[0]
    said = [f"{label} at epoch {r[c]:.0f}" for c, label, _ in EVENTS if c in r and pd.notna(r[c])]
    text = (
        "The noised variable's gain fell below its KL, " + ", ".join(said)
        if said
        else "The noised variable never crossed gain < KL within the noise budget"
    )
    if "base_settled" in ev and not ev["base_settled"].all():
        text += (
            f"; the collapse had not settled before the noise in {int((~ev['base_settled']).sum())} of "
            f"{len(ev)} trials (raise noise.base_epochs)"
        )
    return text + "."


def _plot_trial(top, bottom, df: pd.DataFrame, trial_id: str) -> None:
    shown = df[df["noise_gain"].notna()]
    if not len(shown):
        top.set_title(f"{trial_id}: no variable chosen yet (still in the base phase)")
        return
    x = shown["epoch"]
    for ax in (top, bottom):
        _tint_phases(ax, shown)
        ax.set_xlim(x.min() - 0.5, x.max() + 0.5)
        ax.grid(alpha=0.3)
    # sigma shaded behind the gain and KL (Fig. 7: "acting on its quality by addition of Gaussian blur")
    noise_ax = top.twinx()
    noise_ax.fill_between(x, 0, shown["noise_sigma"], step="mid", color="grey", alpha=0.25, label="noise sigma")
    noise_ax.plot(x, shown["noise_sigma"], drawstyle="steps-mid", color="grey", lw=0.8)
    noise_ax.set_ylabel("noise sigma")
    noise_ax.set_ylim(0, max(1e-9, shown["noise_sigma"].max()) * 1.05)
    top.set_zorder(noise_ax.get_zorder() + 1)
    top.patch.set_visible(False)
    top.plot(x, shown["noise_gain"], color="tab:blue", label="reconstruction gain (with noise)")
    if "noise_gain_clean" in shown:
        top.plot(x, shown["noise_gain_clean"], color="tab:blue", ls="--", lw=1, label="reconstruction gain (means)")
    top.plot(x, shown["noise_kl"], color="tab:red", label="KL divergence")
    top.set_yscale("symlog", linthresh=0.1)  # the crossing and the collapse happen near 0 nats
    top.set_ylabel("nats per image (symlog)")
    variable = shown["noise_variable"].dropna().iloc[-1] if "noise_variable" in shown else float("nan")
    moving = " — base phase NOT settled" if settled.known(df) and not _base_settled(df) else ""
    top.set_title(
        f"{trial_id + ': ' if trial_id else ''}latent variable {variable:.0f} under Gaussian noise "
        f"(Sec. 5, Fig. 7){moving}"
    )
    bottom.plot(x, shown["noise_var_mu"], color="tab:purple", label="var_mu = Var[mu(X)]")
    bottom.set_ylabel("var_mu")
    bottom.set_xlabel("epoch")
    s2_ax = bottom.twinx()
    s2_ax.plot(x, shown["noise_mean_sigma2"], color="tab:orange", label="mean_sigma2 = E[sigma^2(X)]")
    s2_ax.set_ylabel("mean_sigma2")
    s2_ax.set_ylim(0, 1.1)
    _mark_events(top, bottom, df)
    _legend(top, noise_ax)
    _legend(bottom, s2_ax)


def _tint_phases(ax, df: pd.DataFrame) -> None:
    """Colour each run of epochs of one phase (epoch e covers [e - 0.5, e + 0.5])."""
    runs = (df["phase"] != df["phase"].shift()).cumsum()
    for _, part in df.groupby(runs):
        phase = part["phase"].iloc[0]
        if phase in PHASE_COLORS:
            ax.axvspan(
                part["epoch"].min() - 0.5,
                part["epoch"].max() + 0.5,
                color=PHASE_COLORS[phase],
                alpha=0.5,
                lw=0,
                label=phase.replace("_", " "),
            )


def _mark_events(top, bottom, df: pd.DataFrame) -> None:
    for col, label, color in EVENTS:
        if col in df and df[col].notna().any():
            epoch = df[col].dropna().iloc[-1]
            for ax in (top, bottom):
                ax.axvline(epoch, color=color, ls=":", lw=1.5, label=f"{label} (epoch {epoch:.0f})")


def _legend(ax, twin) -> None:
    handles, labels = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    seen = dict(zip(labels + more[1], handles + more[0]))
    ax.legend(seen.values(), seen.keys(), fontsize=8, loc="upper left", bbox_to_anchor=(1.08, 1.0))


def section(study: Study) -> Chart:
    return fig7(study.tables)
