"""Progress lines on stderr for long commands: `[export: 12/40 trials read · ~30 s left]`.

One whole line per step, per finished trial, or at most one every few seconds: no carriage
returns or bars, so a terminal, a log file and CI read the same thing. Time left is said only where
the total is known. VGGBN_PROGRESS=0 turns the lines off. No Ray here (the sweep's Tune callback
that prints per finished trial is vggbn/sweep/progress.py).
"""

from __future__ import annotations

import os
import statistics
import sys
import time
from typing import Callable, Iterable

ENV = "VGGBN_PROGRESS"  # "0": no progress lines


def enabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def say(text: str) -> None:
    """One progress line on stderr, `[text]`."""
    if enabled():
        print(f"[{text}]", file=sys.stderr, flush=True)


def duration(seconds: float) -> str:
    """A human time span: '40 s', '3 min', '2.5 h'."""
    s = max(0.0, float(seconds))
    if s < 10:
        return f"{s:.1f} s"
    if s < 90:
        return f"{s:.0f} s"
    if s < 90 * 60:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def trials_left(durations: Iterable[float], remaining: float, concurrency: float) -> float | None:
    """Seconds until `remaining` trials are done: the median finished trial's time x remaining /
    trials at once. None when no trial finished yet (nothing to go by)."""
    done = [float(d) for d in durations if d is not None and d == d and d >= 0]
    if not done or remaining < 0:
        return None
    return statistics.median(done) * remaining / max(1.0, float(concurrency))


def ago(seconds: float) -> str:
    return "just now" if seconds < 1 else f"{duration(seconds)} ago"


class Counter:
    """`n/total unit` done so far, with the time left from the mean time per unit so far; a line at
    most every `every_s` seconds, and always for the last unit (unless `last_line` is False) or on
    `line(force=True)`."""

    def __init__(self, what: str, total: int, unit: str, *, every_s: float = 5.0, last_line: bool = True,
                 clock: Callable[[], float] = time.monotonic, started: float | None = None):
        self.what, self.total, self.unit, self.every_s, self.clock = what, max(0, int(total)), unit, every_s, clock
        self.last_line = last_line  # started: clock() when the work began (before the total was known)
        self.done, self.t0, self.last = 0, clock() if started is None else started, None

    def left(self) -> float | None:
        if not self.done or self.total <= self.done:
            return None
        return (self.clock() - self.t0) / self.done * (self.total - self.done)

    def text(self, extra: str = "") -> str:
        parts = [f"{self.what}: {self.done}/{self.total} {self.unit}", *([extra] if extra else [])]
        left = self.left()
        if left is not None:
            parts.append(f"~{duration(left)} left")
        elif self.total and self.done >= self.total:
            parts.append(f"in {duration(self.clock() - self.t0)}")
        return " · ".join(parts)

    def add(self, n: int = 1, extra: str = "", force: bool = False) -> None:
        self.done += n
        self.line(extra, force=force or self.last_line and self.done >= self.total)

    def line(self, extra: str = "", force: bool = False) -> None:
        now = self.clock()
        if force or self.last is None and now - self.t0 >= self.every_s or \
                self.last is not None and now - self.last >= self.every_s:
            self.last = now
            say(self.text(extra))


class Steps:
    """`[report 2/5: statistics]`: a fixed list of steps, one line as each one starts."""

    def __init__(self, what: str, steps: list[str]):
        self.what, self.steps, self.i = what, steps, 0

    def __call__(self, step: str, detail: str = "") -> None:
        self.i = self.steps.index(step) + 1 if step in self.steps else self.i + 1
        say(f"{self.what} {self.i}/{len(self.steps)}: {step}" + (f" {detail}" if detail else ""))
