"""A study's answers (analysis/answers.py) and its counts, printed: by ``run`` at its end and by ``status``.

On a terminal the headings are bold and "works" / "fails" / "not settled" coloured (not with NO_COLOR set),
tables wrapped to the terminal's width; in a file or a pipe plain text, one table row a line.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path

import pandas as pd

from analysis.answers import answers
from vaesweep.config.errors import SpecError
from vaesweep.config.folder import LAMBDA_STAR
from vaesweep.config.spec import spec_from_dict
from vaesweep.study.progress import counts, is_terminal
from vaesweep.study.tables import load_trials, read_spec_copy

STYLE = {"bold": "\033[1m", "green": "\033[32m", "red": "\033[31m", "yellow": "\033[33m", "end": "\033[0m"}
TONES = [(r"\bworks\b", "green"), (r"\bfails\b", "red"), (r"\bnot settled\b", "yellow"), (r"\bfailed\b", "red")]


def answer_lines(path: Path, colour: bool = False, width: int | None = None) -> list[str]:
    """The study's name and counts, its failed trials, then every section of its answers."""
    spec = read_spec_copy(path)
    trials = load_trials(path)
    star = pd.read_parquet(path / LAMBDA_STAR) if (path / LAMBDA_STAR).exists() else None
    paint = _painter(colour)
    lines = [paint(f"[{spec.get('name', path.name)}] {counts(trials, planned(spec, len(trials)))}", "bold")]
    for _, row in trials[trials["status"] == "failed"].iterrows():
        lines.append(paint(f"  failed {row['trial_id']}: {row['error']}", "red"))
    for heading, body in answers(trials, star):
        lines.append(paint(f"{heading}:", "bold"))
        if isinstance(body, pd.DataFrame):
            text = body.to_string(index=not isinstance(body.index, pd.RangeIndex), line_width=width)
            lines.extend("  " + ln for ln in text.splitlines())
        else:
            lines.extend("  " + _tone(ln, paint) for ln in body)
    return lines


def planned(spec: dict, n_trials: int) -> int:
    """The trials the study's saved spec runs (its grid points, seeds and samples, as the running driver counts
    them), or the ``n_trials`` its tables hold where that is more (a method study) or the spec unreadable."""
    try:
        return max(spec_from_dict(spec).n_grid_points(), n_trials) if spec else n_trials
    except SpecError:
        return n_trials


def print_answers(path: Path, stream=None) -> None:
    stream = stream if stream is not None else sys.stdout
    terminal = is_terminal(stream)
    width = shutil.get_terminal_size().columns - 2 if terminal else None
    for line in answer_lines(path, colour=terminal and "NO_COLOR" not in os.environ, width=width):
        print(line, file=stream)


def _painter(colour: bool):
    def paint(text: str, style: str) -> str:
        return f"{STYLE[style]}{text}{STYLE['end']}" if colour else text

    return paint


def _tone(line: str, paint) -> str:
    for pattern, style in TONES:
        line = re.sub(pattern, lambda m, s=style: paint(m.group(0), s), line)
    return line
