"""What a running study shows while it runs, from the trials table the Recorder rewrites at every flush.

On a terminal (stdout is a TTY): one display redrawn in place (tqdm): a bar of the trials finished, with
how many run, failed and settled, and one line per running trial: its epoch, active variables, variance-law
residual (Sec. 4) and whether its collapse has settled (Sec. 3, Fig. 2; vaesweep/engine/settle.py).
Elsewhere (a log file, CI, ``nohup``): a line only when something changes (a trial starts, settles, stops
and why, fails, is retried or interrupted), and a heartbeat with the running trials when nothing was printed
for a minute. Either way the study's answers come at the end (vaesweep/cli/answers.py), not in these lines.

Needs pandas and tqdm only (no Ray, no torch): ``status`` prints the same counts.
"""

from __future__ import annotations

import os
import sys
import time

import pandas as pd
from tqdm import tqdm

HEARTBEAT_S = 60.0  # a non-terminal heartbeat at most this often, and only when nothing else was printed
ENDED = ("done", "failed", "interrupted")


def is_terminal(stream) -> bool:
    """Whether ``stream`` is an interactive terminal that redraws in place (not a file, a pipe, TERM=dumb)."""
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty()) and os.environ.get("TERM") != "dumb"


def _settled(row) -> bool:
    v = row.get("settled")
    return v is not None and not (isinstance(v, float) and pd.isna(v)) and bool(v)


def _num(row, key):
    v = row.get(key)
    return None if v is None or pd.isna(v) else v


def counts(trials: pd.DataFrame, total: int) -> str:
    """'3/8 done, 2 running, 0 failed, 3 settled' (with ', 1 interrupted' when some were): done out of
    ``total``, or only the count where the table holds more trials than that (a method study's folder keeps
    every phase's trials)."""
    n = trials["status"].value_counts() if len(trials) else pd.Series(dtype=int)
    done = f"{n.get('done', 0)}/{total}" if total >= len(trials) else f"{n.get('done', 0)}"
    n_settled = sum(_settled(r) for r in trials.to_dict("records")) if "settled" in trials else 0
    line = f"{done} done, {n.get('running', 0)} running, {n.get('failed', 0)} failed, {n_settled} settled"
    if n.get("interrupted", 0):
        line += f", {n['interrupted']} interrupted"
    return line


def label(row, fields: tuple[str, ...]) -> str:
    """'b685a_00003 latent_dim=8 lam=1': the trial's id and the settings the study varies."""
    parts = [str(row["trial_id"])]
    for f in fields:
        v = row.get(f)
        if v is not None and not (isinstance(v, float) and pd.isna(v)):
            parts.append(f"{f}={v:g}" if isinstance(v, float) else f"{f}={v}")
    return " ".join(parts)


def state(row) -> str:
    """'epoch 45: 6 active, law residual 0.31, not settled' from a trial's latest report."""
    epoch = _num(row, "epochs_done")
    if epoch is None:
        return "no epoch yet"
    bits = []
    if (n := _num(row, "n_active")) is not None:
        bits.append(f"{int(n)} active")
    if (r := _num(row, "law_residual_max")) is not None:
        bits.append(f"law residual {r:.2f}")
    if "kl_working" in row and _num(row, "kl_working") is not None:
        bits.append("KL term works" if bool(row["kl_working"]) else "KL term fails")
    if "settled" in row:
        bits.append("settled" if _settled(row) else "not settled")
    return f"epoch {int(epoch)}: {', '.join(bits)}" if bits else f"epoch {int(epoch)}"


class Progress:
    """Shows a running study (see the module docstring); ``show`` at every flush of the Recorder, ``note``
    for what the table does not hold (a trial retried), ``close`` at the end."""

    def __init__(self, name: str, total: int, fields=(), stream=None):
        self.name, self.total, self.fields = name, total, tuple(fields)
        self.stream = stream  # None: sys.stdout when shown
        self._seen: dict[str, tuple] = {}  # trial_id -> (status, settled) last shown
        self._settling: dict[str, tuple] = {}  # a running trial's new settled state, shown if it holds a flush
        self._t0 = self._last_line = time.monotonic()
        self._tty: bool | None = None
        self._bar = None
        self._lines: list = []  # tqdm lines of the running trials (terminal)

    # Ray pickles the Recorder and this with it: only the settings travel (an older vaesweep's pickled
    # Progress had name, total, metric, mode).
    def __getstate__(self):
        return {"name": self.name, "total": self.total, "fields": self.fields}

    def __setstate__(self, state):
        self.__init__(state["name"], state["total"], state.get("fields", ()))

    @property
    def _out(self):
        return self.stream if self.stream is not None else sys.stdout

    @property
    def terminal(self) -> bool:
        if self._tty is None:
            self._tty = is_terminal(self._out)
        return self._tty

    def show(self, trials: pd.DataFrame) -> None:
        if self.terminal:
            self._draw(trials)
        else:
            self._log(trials)

    def note(self, text: str) -> None:
        """A line above the display (terminal) or in the log: a trial retried."""
        if self.terminal:
            tqdm.write(f"[{self.name}] {text}", file=self._out)
        else:
            self._print([text])

    def close(self, trials: pd.DataFrame | None = None) -> None:
        if trials is not None and len(trials):
            self.show(trials)
        if self._bar is not None:
            for line in self._lines:
                line.close()
            self._bar.close()
            self._bar, self._lines = None, []

    # --- not a terminal: a line per change -------------------------------------------------------
    def _log(self, trials: pd.DataFrame) -> None:
        rows = trials.to_dict("records") if len(trials) else []
        lines, n_done = [], sum(r.get("status") == "done" for r in rows)
        if not self._seen and rows:  # a resumed study: what earlier drivers finished, in one line
            earlier = [r for r in rows if r.get("status") in ENDED]
            if earlier:
                lines.append(f"continuing: {counts(trials[trials['status'].isin(ENDED)], self.total)} earlier")
            self._seen.update({r["trial_id"]: (r.get("status"), _settled(r)) for r in earlier})
        for row in rows:
            tid = row["trial_id"]
            now, before = (row.get("status"), _settled(row)), self._seen.get(tid)
            if now == before or now[0] == "pending":
                self._settling.pop(tid, None)
                continue
            if before is not None and before[0] == now[0] == "running" and self._settling.get(tid) != now:
                # settled (or no longer) while running: said at the next flush if it still holds, so a trial
                # that stops on settling (stop: settled) gets one line, its stop's
                self._settling[tid] = now
                continue
            self._settling.pop(tid, None)
            self._seen[tid] = now
            lines.append(self._change(row, before, now, n_done))
        if not lines and time.monotonic() - self._last_line >= HEARTBEAT_S and len(rows):
            running = [r for r in rows if r.get("status") == "running"]
            lines.append(counts(trials, self.total) + "".join(f"; {label(r, self.fields)} {state(r)}" for r in running))
        self._print([ln for ln in lines if ln])

    def _change(self, row, before, now, n_done: int) -> str:
        status, settled = now
        who = label(row, self.fields)
        if status == "running":
            if before is None or before[0] != "running":
                return f"{who} {'resumed' if before else 'started'}"
            return f"{who} {'settled' if settled else 'no longer settled'} at {state(row)}"
        if status == "done":
            reason = row.get("stopped_reason")
            why = f" ({reason})" if isinstance(reason, str) else ""
            done = f"{n_done}/{self.total}" if self.total >= n_done else f"{n_done}"
            return f"{who} stopped{why} at {state(row)} [{done} done]"
        if status == "failed":
            return f"{who} failed: {row.get('error')}"
        if status == "interrupted":
            return f"{who} interrupted at {state(row)}; it resumes when the study runs again"
        return ""

    def _print(self, lines: list[str]) -> None:
        if not lines:
            return
        clock = _clock(time.monotonic() - self._t0)
        for line in lines:
            print(f"[{self.name} {clock}] {line}", file=self._out, flush=True)
        self._last_line = time.monotonic()

    # --- a terminal: one display, redrawn ----------------------------------------------------------
    def _draw(self, trials: pd.DataFrame) -> None:
        rows = trials.to_dict("records") if len(trials) else []
        n = trials["status"].value_counts() if len(trials) else pd.Series(dtype=int)
        if self._bar is None:
            self._bar = tqdm(
                total=max(self.total, len(rows)),
                desc=self.name,
                unit="trial",
                file=self._out,
                dynamic_ncols=True,
                bar_format="{desc}: {n_fmt}/{total_fmt} trials |{bar}| {elapsed}{postfix}",
            )
        self._bar.total = max(self.total, len(rows))
        self._bar.n = int(n.get("done", 0) + n.get("failed", 0))
        self._bar.set_postfix_str(counts(trials, self.total).split(", ", 1)[1], refresh=False)
        self._bar.refresh()
        running = [r for r in rows if r.get("status") == "running"]
        while len(self._lines) < len(running):
            self._lines.append(
                tqdm(total=0, position=len(self._lines) + 1, bar_format="{desc}", file=self._out, leave=False)
            )
        for i, line in enumerate(self._lines):
            r = running[i] if i < len(running) else None
            line.set_description_str(f"  {label(r, self.fields)}  {state(r)}" if r else "", refresh=True)


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"
