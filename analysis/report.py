"""The study report: every chart of ``analysis`` for one study, in a folder a browser opens offline.

``build_report(study_dir)`` reads the study's Parquet tables and writes ``<study>/report/``:

- ``index.html``: one self-contained page (inline CSS, no scripts, images beside it);
- ``<chart>.png``: each figure, with its one-sentence reading under it on the page;
- ``<table>.csv`` and ``<table>.md``: the tables (trials, onset of sparsity, Table 1, ...).

Charts the study cannot support (it did not vary latent_dim, has no FID-proxy, no checkpoints)
appear as a one-line note. The per-trial charts (Table 1, Fig. 2, Fig. 3, latent traversals) are drawn for the
*chosen trials*: one representative per architecture (see ``choose_trials``), or the ids given.
Trials whose collapse had not settled (vaesweep/engine/settle.py) are marked everywhere; when some or all
did not settle, or the study predates the ``settled`` column, the page's first line says so.
"""

from __future__ import annotations

import html
from pathlib import Path

import pandas as pd

from analysis.chart import Chart, Study
from analysis.design import frame, panel_fields, varied_fields, with_defaults
from analysis.latents import describe_trial
from analysis.settled import flag, headline, unsettled
from vaesweep.config.folder import LAMBDA_STAR, REPORT_FOLDER, REPORT_PAGE
from vaesweep.config.metrics import trial_keys
from vaesweep.config.trial import TRAINING_CHOICES
from vaesweep.experiments import kind, resolve
from vaesweep.study.tables import load_study, read_spec_copy

# The report's sections, in order, declared here once: the study's kind's own sections first (``Kind.sections``,
# vaesweep/experiments/: the method's answer, Fig. 7), then the paper's numbers beside the study's (when some trial
# has the paper's settings), then the rest, which every study has. Each is "module:function", the function called
# with the ``Study`` (analysis/chart.py) and returning a Chart, or None where it does not apply to the study;
# imported only when the report is drawn, so importing ``analysis`` or this module loads neither torch nor the
# engine (the sample grids and the traversals do, when they are drawn). A new section: a function
# ``section(study) -> Chart | None`` in its analysis module, and its "module:function" in the list where it belongs
# (or in a kind's ``sections``).
EVERY_STUDY = (
    "analysis.paper:section",
    "analysis.capacity:section",
    "analysis.known_dimension:section",  # sprites<k>: active variables against the known dimension
    "analysis.known_dimension:factors_section",
    "analysis.information:section",
    "analysis.law:section",
    "analysis.latents:table1_section",
    "analysis.latents:history_section",
    "analysis.fid:section",
    "analysis.two_stage:section",
    "analysis.samples:section",
    "analysis.traversals:section",
    "analysis.latents:gain_section",
)


def sections(experiment: str) -> tuple[str, ...]:
    """The report's sections of a study of kind ``experiment``, in order."""
    return (*kind(experiment).sections, *EVERY_STUDY)


def choose_trials(
    trials: pd.DataFrame, metric: str = "elbo", mode: str = "max", ids: list[str] | None = None
) -> pd.DataFrame:
    """The trials drawn one by one (Table 1, Fig. 2, Fig. 3): ``ids`` when given, else one per
    architecture (and data set, and training choice such as init when the study varied it): among its
    finished trials, prefer one whose collapse settled, then one whose KL term works (Sec. 4), then one with
    inactive variables (sparsity to look at), then the best ``metric``."""
    df = with_defaults(trials)
    if ids:
        unknown = [i for i in ids if i not in set(df["trial_id"])]
        if unknown:
            raise ValueError(
                f"trial '{unknown[0]}': no such trial in this study; see the trial_id column of its trials table"
            )
        return df.set_index("trial_id").loc[ids].reset_index()
    done = df[(df["status"] == "done") & df["n_active"].notna()] if "n_active" in df else df.iloc[:0]
    if not len(done):
        return done
    if metric not in done or done[metric].isna().all():
        metric, mode = "elbo", "max"
    score = done[metric] if mode == "max" else -done[metric]
    ranked = done.assign(
        _settled=~unsettled(done),
        _works=done["kl_working"].fillna(False).astype(bool),
        _sparse=done["n_inactive"] > 0,
        _score=score.fillna(-float("inf")),
    )
    ranked = ranked.sort_values(["_settled", "_works", "_sparse", "_score"], ascending=False)
    varied = varied_fields(df)
    by = panel_fields(varied) + [f for f in TRAINING_CHOICES if f in varied]  # one per training choice, too
    best = ranked.groupby(by, sort=True, dropna=False).head(1)
    return best.drop(columns=["_settled", "_works", "_sparse", "_score"]).reset_index(drop=True)


def study_charts(study_dir: str | Path, chosen_ids: list[str] | None = None) -> tuple[list[Chart], dict]:
    """Every chart of the study, in report order (``sections``), and the facts the page header shows."""
    study_dir = Path(study_dir)
    t = load_study(study_dir)
    spec = read_spec_copy(study_dir)
    chosen = choose_trials(t.trials, spec.get("metric", "elbo"), spec.get("mode", "max"), chosen_ids)
    lam_star = pd.read_parquet(study_dir / LAMBDA_STAR) if (study_dir / LAMBDA_STAR).exists() else None
    study = Study(study_dir, t, spec, chosen, lam_star)
    drawn = [resolve(path)(study) for path in sections(spec.get("experiment", "train"))]
    charts = [c for c in drawn if c is not None]
    d = frame(t.trials)
    facts = {
        "name": spec.get("name", study_dir.name),
        "n_trials": len(t.trials),
        "n_done": len(d.trials),
        "varied": [f for f in d.varied if f != "threads"],
        "chosen": [describe_trial(r) + flag(r) for _, r in chosen.iterrows()],
        "trials": _trials_table(t.trials, d.varied),
        "headline": headline(t.trials),
    }
    return charts, facts


def build_report(study_dir: str | Path, out: str | Path | None = None, chosen_ids: list[str] | None = None) -> Path:
    """Write the report folder (default ``<study>/report``); returns the path of its index.html."""
    return _build(study_dir, out, chosen_ids)[0]


def report_lines(
    study_dir: str | Path, out: str | Path | None = None, chosen_ids: list[str] | None = None
) -> list[str]:
    """Write the report; the lines a command prints: the page's first line about settling (when
    not every finished trial settled, e.g. "No trial settled: ..."), then ``report: <index.html>``."""
    index, facts = _build(study_dir, out, chosen_ids)
    return [line for line in (facts["headline"], f"report: {index}") if line]


def _build(study_dir: str | Path, out: str | Path | None, chosen_ids: list[str] | None) -> tuple[Path, dict]:
    study_dir = Path(study_dir)
    out = Path(out) if out else study_dir / REPORT_FOLDER
    charts, facts = study_charts(study_dir, chosen_ids)
    out.mkdir(parents=True, exist_ok=True)
    if (out / REPORT_PAGE).exists():  # a previous report: drop its files so none goes stale
        for old in (*out.glob("*.png"), *out.glob("*.csv"), *out.glob("*.md")):
            old.unlink()
    sections = [_write_chart(c, out) for c in charts]
    sections.append(_table_block("trials", facts["trials"], out))
    index = out / REPORT_PAGE
    index.write_text(_page(facts, charts, sections), encoding="utf-8")
    return index, facts


# --- files ----------------------------------------------------------------------------------------


def _trials_table(trials: pd.DataFrame, varied: tuple[str, ...]) -> pd.DataFrame:
    """One row per trial: its varied settings, status, every trial-level metric of the catalogue
    (vaesweep/config/metrics.py) it has, epochs done, time spent and error."""
    cols = [
        "trial_id",
        *[f for f in varied if f != "threads"],
        "status",
        *trial_keys(trials.columns),
        "epochs_done",
        "time_total",
        "error",
    ]
    df = with_defaults(trials)
    return df[[c for c in cols if c in df]]


def _write_chart(chart: Chart, out: Path) -> str:
    body = [f'<section id="{chart.key}"><h2>{html.escape(chart.title)}</h2>']
    if chart.skipped:
        body.append(f'<p class="note">Not drawn: {html.escape(chart.reading)}</p>')
    else:
        chart.figure.savefig(out / f"{chart.key}.png", dpi=110)
        body.append(f'<img src="{chart.key}.png" alt="{html.escape(chart.title)}">')
        body.append(f'<p class="reading">{html.escape(chart.reading)}</p>')
    body += [_table_block(name, df, out) for name, df in chart.tables.items()]
    return "\n".join(body) + "</section>"


def _table_block(name: str, df: pd.DataFrame, out: Path, max_rows: int = 200) -> str:
    """Write ``name``.csv and .md; the HTML table (its first ``max_rows`` rows) with inactive rows
    (active == False) in red and unsettled trials (settled == False) in grey italics."""
    df.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(to_markdown(df), encoding="utf-8")
    more = f"<p>The first {max_rows} of {len(df)} rows; all are in the CSV.</p>" if len(df) > max_rows else ""
    df = df.head(max_rows)
    floats = [c for c in df.columns if pd.api.types.is_float_dtype(df[c])]
    # every cell and header as text: a spec's data_root or an error line may hold markup (reports get shared)
    styler = df.style.hide(axis="index").format(escape="html").format_index(escape="html", axis=1)
    styler = styler.format("{:.4g}", subset=floats, na_rep="—")
    if "active" in df:
        styler = styler.apply(lambda r: ["background: #f9d3d3" if not r["active"] else ""] * len(r), axis=1)
    if "settled" in df:  # unsettled trials greyed: their collapse numbers were still moving
        styler = styler.apply(
            lambda r: [UNSETTLED_ROW if r.get("status", "done") == "done" and flag(r) else ""] * len(r), axis=1
        )
    return (
        f'<div class="table"><h3>{html.escape(name)} <a href="{name}.csv">CSV</a> '
        f'<a href="{name}.md">Markdown</a></h3>{styler.to_html()}{more}</div>'
    )


def to_markdown(df: pd.DataFrame) -> str:
    """A GitHub Markdown table; floats to 4 significant digits, inactive variables and unsettled
    trials in bold."""

    def cell(col, v):
        if col in ("active", "settled") and not pd.isna(v):
            return "yes" if bool(v) else "**no**"
        if isinstance(v, float):
            return "" if pd.isna(v) else f"{v:.4g}"
        return "" if v is None else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + " --- |" * len(df.columns)]
    lines += [
        "| " + " | ".join(cell(c, v) for c, v in zip(df.columns, row)) + " |" for row in df.itertuples(index=False)
    ]
    return "\n".join(lines) + "\n"


STYLE = """body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}p.reading{font-style:italic;margin:.4em 0 1.2em}
p.note{color:#666;background:#f4f4f4;padding:.5em}table{border-collapse:collapse;font-size:12px;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}h3{font-size:14px}h3 a{font-weight:normal;font-size:12px}
section{margin-bottom:2.5em}nav a{margin-right:1em}
p.warning{background:#fff3cd;border:1px solid #e0c060;padding:.6em;font-weight:bold}"""
UNSETTLED_ROW = "color: #888; font-style: italic"


def _page(facts: dict, charts: list[Chart], sections: list[str]) -> str:
    name = html.escape(facts["name"])
    nav = " ".join(f'<a href="#{c.key}">{html.escape(c.title.split(":")[0])}</a>' for c in charts)
    chosen = "".join(f"<li>{html.escape(c)}</li>" for c in facts["chosen"]) or "<li>none yet</li>"
    warning = f'<p class="warning">{html.escape(facts["headline"])}</p>' if facts.get("headline") else ""
    head = (
        f"{warning}<h1>vaesweep study report: {name}</h1>"
        f"<p>{facts['n_done']} of {facts['n_trials']} trials finished; varied: "
        f"{html.escape(', '.join(facts['varied']) or 'nothing')}.</p>"
        f"<p>Trials drawn one by one (Table 1, Fig. 2, Fig. 3):</p><ul>{chosen}</ul><nav>{nav}</nav>"
    )
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>vaesweep report: {name}</title>'
        f"<style>{STYLE}</style></head><body>\n{head}\n" + "\n".join(sections) + "\n</body></html>\n"
    )
