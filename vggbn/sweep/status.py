"""`vggbn status PATH`: where a sweep stands (running, stopped or finished), from any machine.

Read only: it starts no Ray, writes nothing and unpickles nothing (so it is safe on a bucket one may
only read). Through the experiment's pyarrow filesystem it reads:
- Ray's newest `experiment_state-*.json`, the snapshot `Tuner.restore` reads too: per trial a JSON
  document with `trial_id`, `status`, `config`, and one with `last_result`, `num_failures` (Ray
  2.60's format, read by ray_compat.experiment_state; anything else is an ExperimentError naming the
  file). Ray's driver rewrites it every TUNE_GLOBAL_CHECKPOINT_S (5 s under vggbn) while it runs,
  so its age says how fresh "running" is;
- spec.yaml (the plan: how many trials, the metric, the resources), each finished trial's
  vggbn-config.json and vggbn-error.json, and vggbn-budget.json.
A finished trial's status is the export's (store.exports.trial_status), so status and trials.parquet
agree. No Ray import: `vggbn status` answers without loading Ray.
"""

from __future__ import annotations

import datetime
import fnmatch
import json
import time
from concurrent.futures import ThreadPoolExecutor

from vggbn import progress
from vggbn.schema import BUDGET_FILE, TRIALS
from vggbn.spec.model import CASE_KEY
from vggbn.spec.resources import resource_hours
from vggbn.store import trial_config
from vggbn.store.experiment import Experiment, ExperimentError
from vggbn.store.exports import FINISHED, trial_status
from vggbn.sweep.ray_compat import EXPERIMENT_STATE_GLOB as STATE_GLOB
from vggbn.sweep.ray_compat import experiment_state
STALE_S = 120.0  # no snapshot for this long (and 20 of Ray's periods) while work is left: no driver


def _read_state(exp: Experiment, name: str) -> tuple[dict, list[tuple[dict, dict]], float | None]:
    """The snapshot, its trials as (trial, run) documents and Ray's snapshot period (None: "auto");
    re-read if caught mid-write."""
    err: Exception | None = None
    for attempt in range(3):
        try:
            return experiment_state(exp.read_bytes(name) or b"")
        except OSError as e:
            raise exp.error(e) from None
        except (ValueError, KeyError, TypeError) as e:  # a copy in progress, or not Ray's format
            err = e
            if attempt < 2:
                time.sleep(0.2 * (attempt + 1))
    raise ExperimentError(f"{exp.join(name)}: not a Ray experiment state vggbn can read ({type(err).__name__}: "
                          f"{str(err)[:200]}).", f"restore the file as Ray wrote it, or read the export "
                          f"with `vggbn report {exp.uri}`")


def _finished_trial(exp: Experiment, tid: str, raw: dict) -> tuple[dict, str | None]:
    """(the trial's resolved config, its error or None), as the export reads them (no checkpoint
    is opened: a trial that ran has its stored config)."""
    cfg, note = trial_config.as_row(exp, tid, raw)
    return cfg, exp.trial_error(tid) or note


def status(path: str, now: float | None = None) -> dict:
    """Where the sweep at `path` stands, as a dict (what `vggbn status --json` prints)."""
    import pyarrow.fs as pafs

    exp = Experiment(path)
    spec = exp.spec()  # no directory, not a sweep, an unreadable bucket: the clear errors
    try:
        infos = {i.base_name: i for i in exp.fs.get_file_info(pafs.FileSelector(exp.root))}
        budget = json.loads(exp.read_bytes(BUDGET_FILE) or b"null") or {}
    except OSError as e:
        raise exp.error(e) from None
    except ValueError:
        budget = {}
    now = time.time() if now is None else now
    names = sorted(fnmatch.filter(infos, STATE_GLOB))
    if not names and TRIALS in infos:  # an export copied without Ray's files
        raise ExperimentError(f"{exp.uri}: an export without Ray's experiment state (no {STATE_GLOB}), so "
                              f"where the sweep stood is not here.", f"`vggbn report {exp.uri}` reads the "
                              f"export; status reads the experiment directory as the sweep writes it")
    _, trials, period_s = _read_state(exp, names[-1]) if names else ({}, [], None)
    snap = None
    if names:
        mtime = exp.fs.get_file_info(exp.path(names[-1])).mtime_ns / 1e9  # after the read: its time
        snap = {"file": names[-1], "time_utc": _utc(mtime), "age_s": round(max(0.0, now - mtime), 1),
                "period_s": period_s, "stale": now - mtime > max(STALE_S, 20 * (period_s or 10))}

    ended = [(t, r) for t, r in trials if t.get("status") in ("TERMINATED", "ERROR")]
    with ThreadPoolExecutor(16) as pool:  # a bucket: one request each, many at once
        info = dict(zip((t["trial_id"] for t, _ in ended),
                        pool.map(lambda tr: _finished_trial(exp, tr[0]["trial_id"], tr[0].get("config") or {}),
                                 ended)))
    not_started = set(budget.get("not_started", []))
    rows = []
    for t, r in trials:
        tid, ray_status, last = t["trial_id"], t.get("status"), r.get("last_result") or {}
        cfg, error = info.get(tid, ({}, None))
        if tid in not_started and "time_total_s" not in last:
            kind = "budget_skipped"
        elif ray_status == "RUNNING":
            kind = "running"
        elif ray_status in ("PENDING", "PAUSED"):
            kind = "pending"
        else:
            kind = trial_status(ray_status, last, cfg.get("epochs", 0), error)
        rows.append({"trial_id": tid, "kind": kind, "last": last, "config": cfg or t.get("config") or {},
                     "error": error})

    count = {k: sum(r["kind"] == k for r in rows) for k in (*FINISHED, "running", "errored", "pending",
                                                               "budget_skipped")}
    planned, adaptive = spec.trial_count(), spec.seeds is not None
    export = infos.get(TRIALS)
    live = count["running"] + count["pending"]
    exported_after = bool(export and names and export.mtime_ns >= infos[names[-1]].mtime_ns)
    not_created = 0 if adaptive and not live and exported_after else max(0, planned - len(rows))
    done = sum(count[k] for k in FINISHED)
    finished = bool(names) and not live and not not_created
    state = ("not started" if not names else "finished" if finished
             else "stopped" if snap["stale"] else "running")

    seconds = sum(float(r["last"].get("time_total_s") or 0.0) for r in rows)
    res = spec.resources
    compute = {"trial_seconds": round(seconds, 1), "cpu_hours": resource_hours(seconds, res.trial_cpu),
               "gpu_hours": resource_hours(seconds, res.trial_gpu)}
    limits = {u: getattr(spec.budget, u) for u in ("gpu_hours", "cpu_hours") if getattr(spec.budget, u)}
    left = None
    if state == "running" and count["running"]:
        times = [r["last"].get("time_total_s") for r in rows if r["kind"] in FINISHED]
        left = progress.trials_left(times, planned - done - count["errored"] - count["budget_skipped"],
                                    count["running"])
    return {
        "path": exp.uri, "name": spec.name, "search": spec.search, "state": state,
        "planned": planned, "planned_is_max": adaptive,
        "trials": {"done": done, **count, "pending_created": count["pending"], "not_created": not_created,
                   "pending": count["pending"] + not_created + count["budget_skipped"]},
        "running": [r["trial_id"] for r in rows if r["kind"] == "running"],
        "errors": {r["trial_id"]: r["error"] for r in rows if r["kind"] == "errored"},
        "best": _best(spec, rows), "compute": compute,
        "budget": {u: {"limit": v, "spent": compute[u]} for u, v in limits.items()} or None,
        "snapshot": snap, "time_left_s": None if left is None else round(left, 1),
    }


def _utc(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _best(spec, rows: list[dict]) -> dict | None:
    """The finished trial best on the spec's (first) metric, with its swept keys' values."""
    metric, mode = spec.objectives[0]
    scored = [(float(r["last"][metric]), r) for r in rows
              if r["kind"] in FINISHED and isinstance(r["last"].get(metric), (int, float))
              and r["last"][metric] == r["last"][metric]]
    if not scored:
        return None
    value, row = (max if mode == "max" else min)(scored, key=lambda s: s[0])
    keys = [k for k in spec.space if k != CASE_KEY] + (["seed"] if spec.seeds else [])
    keys += sorted({k for c in spec.cases for k in c} - set(keys))
    return {"metric": metric, "mode": mode, "value": value, "trial_id": row["trial_id"],
            "epoch": row["last"].get("epoch"),
            "config": {k: row["config"][k] for k in keys if k in row["config"]}}


def status_text(st: dict) -> str:
    """`vggbn status`'s lines: the counts, the best, the compute, how fresh it is."""
    t, snap = st["trials"], st["snapshot"]
    kinds = ", ".join(f"{t[k]} {k.replace('_', '-')}" for k in FINISHED if t[k])
    total = f"{'up to ' if st['planned_is_max'] else ''}{st['planned']}"
    pend = [f"{t['pending_created']} queued"] * bool(t["pending_created"]) \
        + [f"{t['not_created']}{' at most' if st['planned_is_max'] else ''} not created yet"] * bool(t["not_created"]) \
        + [f"{t['budget_skipped']} skipped by the budget"] * bool(t["budget_skipped"])
    head = (f"{st['name']}: {st['state']} · {t['done']} of {total} trials done" + (f" ({kinds})" if kinds else "")
            + f" · {t['running']} running · {t['errored']} errored · {t['pending']} pending"
            + (f" ({', '.join(pend)})" if pend else "")
            + (f" · ~{progress.duration(st['time_left_s'])} left" if st["time_left_s"] is not None else ""))
    lines = [head]
    if st["running"]:
        shown = ", ".join(st["running"][:8]) + (f" +{len(st['running']) - 8} more" if len(st["running"]) > 8 else "")
        lines.append(f"  running: {shown}, as of Ray's snapshot {progress.ago(snap['age_s'])}; may be stale: "
                     f"they are not running if the sweep's driver has stopped")
    for tid, err in list(st["errors"].items())[:5]:
        lines.append(f"  errored {tid}: {err or '(see the trial directory)'}")
    b = st["best"]
    if b:
        cfg = ", ".join(f"{k}={v}" for k, v in b["config"].items())
        value = f"{b['value']:.4f}" if b["metric"].endswith(("_acc", "_loss")) else f"{b['value']:.4g}"
        lines.append(f"  best {b['metric']} ({b['mode']}): {value}, trial {b['trial_id']}"
                     + (f" ({cfg})" if cfg else ""))
    c = st["compute"]
    lines.append(f"  compute: {c['cpu_hours']:.3g} CPU-hours, {c['gpu_hours']:.3g} GPU-hours "
                 f"({progress.duration(c['trial_seconds'])} of trial time)"
                 + "".join(f"; budget {v['spent']:.3g} of {v['limit']:g} {u.replace('_', '-')}"
                           for u, v in (st["budget"] or {}).items()))
    if snap is None:
        lines.append("  updated: no trial started yet (the sweep is claimed; Ray has written no snapshot)")
    else:
        every = f"every {snap['period_s']:g} s" if snap["period_s"] else "every few seconds"
        lines.append(f"  updated: Ray's snapshot of {snap['time_utc']}, {progress.ago(snap['age_s'])}"
                     + (f"; a running driver rewrites it {every}, so the driver is not running? "
                        f"(`vggbn resume {st['path']}` continues the sweep)" if st["state"] == "stopped" else ""))
    return "\n".join(lines)
