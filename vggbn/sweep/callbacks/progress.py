"""`vggbn sweep`'s progress: one line on stderr per finished trial,
`[7/16 trials done · 2 running · ~3 min left]` (the formatting: vggbn/progress.py).

A Tune Callback, pickled into tuner.pkl with the others, so a resumed sweep prints them too. The
total is the spec's trial count, read again from the experiment's spec.yaml at each start
(`vggbn extend` may have added trials); with adaptive seeds it is the most the plan may run. Time
left: the median finished trial's time x the trials left / the most trials seen running at once.
"""

from __future__ import annotations

from ray.tune import Callback

from vggbn import progress
from vggbn.store.experiment import Experiment


class SweepProgress(Callback):
    def __init__(self, experiment: str, total: int, up_to: bool = False):
        self.experiment, self.total, self.up_to = experiment, total, up_to
        self.peak = 0  # the most trials seen running at once: the concurrency the sweep gets

    def relocate(self, experiment: str) -> None:
        """Where the experiment is now (runner.resume_sweep, after Tuner.restore): its spec.yaml is
        read from there, not from where the experiment was when it started."""
        self.experiment = experiment

    def setup(self, **info) -> None:
        try:  # the spec as it is now (`vggbn extend` may have added trials)
            spec = Experiment(self.experiment).spec()
            self.total, self.up_to = spec.trial_count(), spec.seeds is not None
        except Exception:  # noqa: BLE001  (the line keeps the total it was started with)
            pass

    def on_trial_start(self, iteration: int, trials: list, trial, **info) -> None:
        self.peak = max(self.peak, sum(t.status == "RUNNING" for t in trials) + (trial.status != "RUNNING"))

    def on_trial_complete(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trials, trial)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        self._line(trials, trial)

    def _line(self, trials: list, trial) -> None:
        print_line(trials, trial, self.total, self.up_to, self.peak)


def _ran(t) -> bool:
    return "time_total_s" in (t.last_result or {})


def line_text(trials: list, ended, total: int, up_to: bool, peak: int) -> str | None:
    """The line after `ended` finished; None for a trial the budget ended before it started."""
    if not _ran(ended) and ended.status != "ERROR":
        return None
    finished = [t for t in trials if t is ended or t.status in ("TERMINATED", "ERROR")]
    skipped = [t for t in finished if not _ran(t) and t.status != "ERROR"]  # the budget's
    done = len(finished) - len(skipped)
    running = sum(t.status == "RUNNING" and t is not ended for t in trials)
    errored = sum(t.status == "ERROR" for t in finished)
    parts = [f"{done}/{'≤' if up_to else ''}{total} trials done" if total else f"{done} trials done"]
    parts += [f"{running} running"] + ([f"{errored} errored"] if errored else [])
    if skipped:
        parts.append(f"{len(skipped)} not started (budget)")
    elif total:
        times = [t.last_result.get("time_total_s") for t in finished if _ran(t) and t.status != "ERROR"]
        left = progress.trials_left(times, max(0, total - done), max(peak, running, 1))
        if left is not None and done < total:
            parts.append(f"~{progress.duration(left)} left" + (" at most" if up_to else ""))
    return " · ".join(parts)


def print_line(trials: list, ended, total: int, up_to: bool, peak: int) -> None:
    text = line_text(trials, ended, total, up_to, peak)
    if text:
        progress.say(text)
