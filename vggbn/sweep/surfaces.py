"""The Li et al. job: surfaces around each trial's final checkpoint -> surfaces.parquet.

Checkpoints are read through checkpoint.py (sha256 checked, weights_only, the newest intact one);
the config is the trial's stored, resolved one. Grid points run as Ray tasks when a cluster is
given (--address / RAY_ADDRESS). surfaces.parquet is merged by trial: surfaces of trials not asked
for this time are kept.
"""

from __future__ import annotations

import os

from vggbn import progress
from vggbn.config import ConfigError, TrialConfig
from vggbn.landscape import grid_points, surfaces
from vggbn.schema import SCHEMA_VERSION, SURFACES, TRIALS
from vggbn.store import checkpoint, trial_config
from vggbn.store.experiment import Experiment, ExperimentError
from vggbn.store.exports import write_export
from vggbn.store.lease import Lease
from vggbn.sweep.runner import init_ray


def ray_map(fn, args: tuple, parts: list, on_done=None) -> list:
    """Run fn(*args, part) for each part as Ray tasks; the shared args go to the object store once.
    on_done(part) is called as each part's task finishes (the progress lines)."""
    import ray

    refs = [ray.put(a) for a in args]
    task = ray.remote(num_cpus=1)(fn)
    futures = [task.remote(*refs, part) for part in parts]
    todo = {f: part for f, part in zip(futures, parts)}
    while on_done and todo:
        ready, _ = ray.wait(list(todo), num_returns=1)
        on_done(todo.pop(ready[0]))
    return ray.get(futures)


def _counting(map_chunks, points):
    """surfaces()'s map_chunks (in process when None) that adds each finished part's points."""
    def run(fn, args, parts):
        if map_chunks is not None:
            return map_chunks(fn, args, parts, on_done=lambda part: points.add(len(part)))
        out = []
        for part in parts:
            out.append(fn(*args, part))
            points.add(len(part))
        return out
    return run


def _config(exp: Experiment, trial_id: str, ckpts: list[tuple[str, dict]], state: dict | None) -> dict | None:
    """The config the checkpoint's weights were trained with (the trial's stored one), or None when
    there is no checkpoint or no config that resolves: the trial is skipped."""
    if state is None:
        return None
    found = trial_config.stored(exp, trial_id, ckpts, state)
    try:
        return TrialConfig.from_stored(found).to_flat() if found is not None else None
    except ConfigError:
        return None


def landscape(path: str, *, trial_ids: list[str] | None = None, resolution: int = 21,
              samples: int = 2048, seed: int = 0, address: str | None = None) -> dict:
    """Li et al. surfaces around the final checkpoint of each (chosen) trial."""
    exp = Experiment(path)
    exp.spec()  # a clear error when this is not a sweep directory
    trials, _ = exp.read_export(TRIALS)
    if trials is None:
        raise ExperimentError(f"{exp.uri}: no {TRIALS} here.", f"run the sweep to its end "
                              f"(`vggbn resume {exp.uri}`) or `vggbn export {exp.uri}` first.")
    known = [str(t) for t in trials["trial_id"]]
    unknown = sorted(set(trial_ids or []) - set(known))
    if unknown:
        raise ExperimentError(f"{exp.uri}: no trial {', '.join(unknown)} (trials: {', '.join(sorted(known))})")
    with Lease(exp, "landscape"):  # its read-merge-write of surfaces.parquet: one driver at a time
        return _surfaces(exp, known, trial_ids, resolution, samples, seed, address)


def _surfaces(exp: Experiment, known: list[str], trial_ids: list[str] | None, resolution: int, samples: int,
              seed: int, address: str | None) -> dict:
    import pandas as pd

    map_chunks = None
    if address or os.environ.get("RAY_ADDRESS"):
        init_ray(address)
        map_chunks = ray_map
    frames, skipped = [], []
    chosen = [t for t in known if not trial_ids or t in trial_ids]
    per_trial = len(grid_points(resolution))  # surfaces()' own points: 1D axis + 2D grid
    points = progress.Counter("landscape", per_trial * len(chosen), "points", every_s=10.0, last_line=False)
    for i, tid in enumerate(chosen):
        ckpts = checkpoint.with_meta(exp.fs, exp.trial_dir(tid))
        state, _, _ = checkpoint.newest_readable(exp.fs, [p for p, _ in ckpts])
        history = (state or {}).get("history") or []
        cfg = _config(exp, tid, ckpts, state)
        if state is None or (history and history[-1].get("diverged")) or cfg is None:
            skipped.append(tid)
            points.total -= per_trial
            continue
        df = surfaces(cfg, state["model"], resolution=resolution, samples=samples, seed=seed,
                      map_chunks=_counting(map_chunks, points))
        frames.append(df.assign(trial_id=tid, epoch=state["epoch"]))
        points.line(f"{i + 1 - len(skipped)}/{len(chosen) - len(skipped)} trials", force=True)
    if not frames:
        raise ExperimentError(f"{exp.uri}: no trial with a usable checkpoint (skipped: {', '.join(skipped)})")
    new = pd.concat(frames, ignore_index=True)
    old, _ = exp.read_export(SURFACES)
    if old is not None:  # keep the surfaces of trials not recomputed now
        new = pd.concat([old[~old["trial_id"].isin(new["trial_id"])], new], ignore_index=True)
    write_export(exp, SURFACES, new, {"schema_version": SCHEMA_VERSION})
    return {"path": exp.uri, "trials": len(frames), "skipped": skipped, "points": len(new)}
