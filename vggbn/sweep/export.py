"""Ray's experiment -> trials/epochs/steps/probes.parquet, the interface for analysis.

What is exported is what was trained: each trial's config is the resolved one it stored when it
started (or, for experiments written before that, the one in its checkpoint), never Ray's raw dict
resolved with today's defaults. The history comes from Ray's results, completed by the trial's
newest checkpoint (epochs whose results Ray lost with a dead node). Every file is written
atomically; an optional file with nothing to hold is removed, so no stale one survives. Finished
trials keep only their newest intact checkpoint.
"""

from __future__ import annotations

import json
import logging
import time
import warnings

from vggbn import progress
from vggbn.provenance import provenance
from vggbn.schema import (BUDGET_FILE, EPOCH_EXTRA, EPOCH_METRICS, EPOCHS, PROBES, SCHEMA_VERSION, STEPS,
                          TRIAL_CONFIG_FILE, TRIAL_DIR, TRIALS)
from vggbn.store import checkpoint, pbt_record, trial_config
from vggbn.store.experiment import Experiment, ExperimentError
from vggbn.store.exports import FINISHED, trial_status, write_export
from vggbn.spec.pbt import TYPES as PBT_TYPES


def _analysis(exp: Experiment):
    from ray.tune import ExperimentAnalysis

    quiet = logging.getLogger("ray.tune")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # trials that never started have no results yet: not news
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            path, fs = exp.ray_path()  # object storage: the URI's filesystem (its query's endpoint)
            return ExperimentAnalysis(path, storage_filesystem=fs)
    except Exception as e:  # noqa: BLE001  (Ray raises many kinds for a damaged state)
        raise ExperimentError(f"{exp.uri}: Ray's experiment state cannot be read ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:300]}).", "restore the directory as the "
                              "sweep wrote it (experiment_state-*.json, trial_*/)") from None
    finally:
        quiet.setLevel(level)


def export(path: str, wall_time_s: float | None = None) -> dict:
    """Write the parquet files next to the Ray experiment. Returns a summary."""
    import pandas as pd

    exp = Experiment(path)
    spec = exp.spec()
    budget = json.loads(exp.read_bytes(BUDGET_FILE) or b"null")  # the spec's budget was reached
    not_started = set((budget or {}).get("not_started", []))
    is_pbt = spec.scheduler.type in PBT_TYPES  # only its trials have a vggbn-pbt.json to read
    started = time.monotonic()  # Ray's results are read here: part of the time per trial
    ea = _analysis(exp)
    driver = provenance()
    rows, epoch_frames, step_rows, probe_rows, pruned = [], [], [], [], 0
    read = progress.Counter("export", len(ea.trials), "trials read", started=started)  # every 5 s, and the last
    for trial in ea.trials:
        tid = trial.trial_id
        tdir = exp.trial_dir(tid)
        ckpts = checkpoint.with_meta(exp.fs, tdir)
        cfg, config_error = trial_config.as_row(exp, tid, trial.config, ckpts)
        meta = ckpts[0][1] if ckpts else {}
        saved = checkpoint.read_history(exp.fs, ckpts[0][0]) if ckpts else {"history": [], "steps": [], "probes": []}
        df = ea.trial_dataframes.get(tid)
        pbt = pbt_record.read(exp, tid) if is_pbt else None  # a PBT trial's values per epoch and donors
        if df is None or df.empty:
            df = pd.DataFrame(columns=list(EPOCH_METRICS))
        df = df[[c for c in df.columns if c in EPOCH_METRICS or c in EPOCH_EXTRA]]
        if "epoch" in df:
            df = df.dropna(subset=["epoch"]).drop_duplicates("epoch", keep="last")
            # the checkpoint's own history fills epochs whose results Ray lost (a node dying
            # between a report and the driver logging it); those rows have no node_id/timestamp
            lost = [h for h in saved["history"] if h.get("epoch") not in set(df["epoch"])]
            if lost and pbt is None:  # a PBT trial's checkpoint history holds its donors' epochs
                df = pd.concat([df, pd.DataFrame(lost)[[c for c in EPOCH_METRICS if c in lost[0]]]],
                               ignore_index=True)
            df = df.sort_values("epoch", ignore_index=True)
        if pbt is not None:  # its epochs run by run, with the values in force and the donors
            df = pbt_record.merge(pbt, df)
        last = df.iloc[-1].to_dict() if len(df) else {}
        notes = []  # what this export could not verify, said in the row (export_notes)
        if not exp.exists(TRIAL_DIR.format(trial_id=tid)):
            notes.append(f"{TRIAL_DIR.format(trial_id=tid)}/ is missing: status and last metrics as Ray's snapshot "
                         f"last saw them; its epochs, checkpoints and config cannot be checked")
            if not last and trial.last_result:
                last = {m: trial.last_result[m] for m in EPOCH_METRICS if m in trial.last_result}
        # the checkpoint's own record of what it trained (a PBT trial's changes as it is exploited)
        trained = (meta.get("config") or {}) if pbt is None else {}
        differs = {k: (cfg[k], v) for k, v in trained.items()
                   if k in cfg and json.loads(json.dumps(cfg[k], default=str)) != v}
        if differs:
            notes.append(f"its stored {TRIAL_CONFIG_FILE} disagrees with its checkpoint (epoch {meta.get('epoch')}): "
                         + ", ".join(f"{k} {a!r} there, {b!r} trained" for k, (a, b) in sorted(differs.items()))
                         + "; exported as trained")
            cfg = {**cfg, **{k: b for k, (_, b) in differs.items()}}
        deterministic = exp.trial_error(tid)  # out of memory or invalid config: run once
        error = deterministic or config_error
        status = trial_status(trial.status, last, cfg.get("epochs", 0) if not config_error else 0, error)
        if tid in not_started and not len(df):  # ended by the budget before it started
            status = "incomplete"
        if status == "errored" and not error:
            error = _ray_error(exp, tid)
        sel = "val_acc" if "val_acc" in df and df["val_acc"].notna().any() else "test_acc"
        best = df.loc[df[sel].idxmax()].to_dict() if sel in df and df[sel].notna().any() else {}
        lr_ = trial.last_result or {}
        row = {"trial_id": tid, "sweep": spec.name, "status": status, **cfg,
               **{("final_lr" if m == "lr" else m): last.get(m) for m in EPOCH_METRICS},
               "epochs_run": int(len(df)),
               "best_epoch": best.get("epoch"), "best_test_acc": best.get("test_acc"),
               "best_val_acc": best.get("val_acc"), "params": meta.get("params", lr_.get("params")),
               "gflops": lr_.get("gflops"),  # as the trial reported it (FlopCounterMode, batch 1)
               "wall_time_s": lr_.get("time_total_s"), "node": lr_.get("node_ip"),
               "hostname": lr_.get("hostname"), "node_id": lr_.get("node_id"),
               "failures": int(getattr(trial, "num_failures", 0) or 0),
               "restore_notes": checkpoint.restore_notes(exp.fs, tdir),
               "export_notes": "; ".join(notes) or None,
               "error": error if status == "errored" else None}
        prov = meta.get("provenance") or {**driver, "device": None, "device_name": None}
        row.update({f"prov_{k}": v for k, v in prov.items()})
        if pbt is not None:  # the config was a schedule: per epoch in epochs.parquet
            row.update(pbt_record.trial_columns(pbt))
        rows.append(row)
        if len(df):
            epoch_frames.append(df.assign(trial_id=tid))
        step_rows += [{"trial_id": tid, **s} for s in saved["steps"]]
        probe_rows += [{"trial_id": tid, **p} for p in saved["probes"]]
        if status in FINISHED or deterministic:
            pruned += checkpoint.prune_finished(exp.fs, tdir)
        read.add()

    trials = pd.DataFrame(rows)
    file_meta = {"schema_version": SCHEMA_VERSION, "spec": spec.model_dump(mode="json"), "driver": driver,
                 "budget": budget}
    write_export(exp, TRIALS, trials, file_meta)
    epochs_df = (pd.concat(epoch_frames, ignore_index=True) if epoch_frames
                 else pd.DataFrame(columns=["trial_id", *EPOCH_METRICS]))
    cols = ["trial_id"] + [c for c in epochs_df.columns if c != "trial_id"]
    write_export(exp, EPOCHS, epochs_df[cols], file_meta)
    for name, found in ((STEPS, step_rows), (PROBES, probe_rows)):
        if found:
            write_export(exp, name, pd.DataFrame(found), file_meta)
        else:
            exp.remove(name)  # an earlier export's file would describe other trials
    counts = trials["status"].value_counts().to_dict() if len(trials) else {}
    notes = {r["trial_id"]: r["restore_notes"] for r in rows if r["restore_notes"]}
    unverified = {r["trial_id"]: r["export_notes"] for r in rows if r["export_notes"]}
    errors = {r["trial_id"]: r["error"] for r in rows if r["error"]}
    return {"path": exp.uri, "trials": len(trials), "status": counts, "wall_time_s": wall_time_s,
            "steps": len(step_rows), "probes": len(probe_rows), "restore_notes": notes, "export_notes": unverified,
            "errors": errors, "failures": int(sum(r["failures"] for r in rows)), "pruned": pruned,
            "budget": budget}


def _ray_error(exp: Experiment, trial_id: str) -> str | None:
    """The last line of the trial's error (Ray keeps error.txt in the trial's directory)."""
    try:
        raw = exp.read_bytes(f"{TRIAL_DIR.format(trial_id=trial_id)}/error.txt")
    except OSError:
        return None
    lines = [ln for ln in (raw or b"").decode(errors="replace").splitlines() if ln.strip()]
    return lines[-1].strip()[:500] if lines else None


def summary_text(summary: dict) -> str:
    """What `vggbn sweep/resume/export` print: counts, files, errored trials, restores."""
    counts = ", ".join(f"{v} {k}" for k, v in sorted(summary["status"].items()))
    wall = f" in {summary['wall_time_s']:.0f} s" if summary.get("wall_time_s") else ""
    return (f"{summary['trials']} trials ({counts}){wall}; exported trials.parquet, epochs.parquet"
            + (", steps.parquet" if summary["steps"] else "")
            + (", probes.parquet" if summary.get("probes") else "") + f" to {summary['path']}"
            + (f"\n  budget reached: {b['spent']:.3g} of {b['limit']:g} {b['unit'].replace('_', '-')}, "
               f"{len(b['not_started'])} trials not started" if (b := summary.get("budget")) else "")
            + "".join(f"\n  errored {t}: {e}" for t, e in sorted(summary.get("errors", {}).items()))
            + "".join(f"\n  restored {t}: {n}" for t, n in sorted(summary.get("restore_notes", {}).items()))
            + "".join(f"\n  unverified {t}: {n}" for t, n in sorted(summary.get("export_notes", {}).items())))
