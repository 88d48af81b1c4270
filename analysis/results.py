"""Load exported sweep directories (trials/epochs/steps.parquet) into DataFrames.

A *variant* is a trial's config without its seed (and without execution-only knobs such as the
device or thread count). Early-stopped, errored, diverged and incomplete trials are kept and
counted, never dropped silently.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from vggbn import storage
from vggbn.config import PRESETS, TrialConfig
from vggbn.schema import EPOCHS, PARQUET_META_KEY, PROBES, SCHEMA_VERSION, STATUSES, STEPS, SURFACES, TRIALS

# knobs that change how a trial runs, not what it computes: not part of a variant
EXECUTION_KEYS = {"seed", "data_dir", "device", "cpu_threads", "compile", "eval_batch_size",
                  "record_steps"}
CONFIG_KEYS = list(TrialConfig.model_fields)


class ResultsError(ValueError):
    """A results directory that cannot be analysed: names the file and the fix."""


@dataclass
class Results:
    trials: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame | None
    probes: pd.DataFrame | None = None
    surfaces: pd.DataFrame | None = None
    specs: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)

    @property
    def partial(self) -> bool:
        return bool((self.trials["status"] == "incomplete").any())


REQUIRED = {TRIALS: ("trial_id", "sweep", "status"), EPOCHS: ("trial_id", "epoch"),
            STEPS: ("trial_id", "step"), PROBES: ("trial_id", "step"), SURFACES: ("trial_id", "kind")}


class _Dir:
    """One sweep directory to read, a local path or an s3:// / gs:// URI, through its pyarrow
    filesystem: the bucket is read in place, nothing is synced first."""

    def __init__(self, given: str | Path):
        self.given = str(given)
        try:
            self.uri = storage.normalize(self.given)
            self.fs, self.root = storage.filesystem(self.uri)
        except storage.StorageError as e:
            raise ResultsError(str(e)) from None
        self.remote = storage.is_remote(self.uri)
        self.name = storage.name(self.uri) if self.remote else Path(self.given).name

    def __str__(self) -> str:
        return self.uri if self.remote else str(Path(self.given))

    def show(self, name: str) -> str:
        """What messages call a file of this directory: the URI (query at the end) or the path."""
        return storage.join(self.uri, name) if self.remote else str(Path(self.given) / name)

    def kind(self, name: str = ""):
        return self.fs.get_file_info(f"{self.root}/{name}" if name else self.root).type

    def is_file(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.kind(name) == pafs.FileType.File

    def read(self, name: str) -> bytes:
        with self.fs.open_input_stream(f"{self.root}/{name}") as f:
            return f.read()


def _read(d: _Dir, name: str, fix: str) -> tuple[pd.DataFrame, dict]:
    """A parquet file of the export and its vggbn metadata; ResultsError when it is damaged."""
    raw = d.read(name)  # an OSError here is the store's (unreachable, denied): load() says so
    try:
        df = pd.read_parquet(io.BytesIO(raw))
        meta = json.loads((pq.read_schema(io.BytesIO(raw)).metadata or {}).get(PARQUET_META_KEY, b"{}"))
    except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a damaged file)
        raise ResultsError(f"{d.show(name)}: not a readable parquet file ({type(e).__name__}: "
                           f"{' '.join(str(e).split())[:200]}).\nFix: {fix}") from None
    missing = [c for c in REQUIRED.get(name, ()) if c not in df.columns]
    if missing or not isinstance(meta, dict):
        raise ResultsError(f"{d.show(name)}: not a vggbn export (no column {', '.join(missing) or 'metadata'}).\n"
                           f"Fix: {fix}")
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise ResultsError(f"{d.show(name)}: written by a newer vggbn (schema {meta['schema_version']}; this one "
                           f"reads up to {SCHEMA_VERSION}).\nFix: upgrade vggbn")
    return df, meta


def load(*paths: str | Path) -> Results:
    """One or more sweep directories (each with trials.parquet) -> Results with variants labelled.
    A directory is a local path or an s3:// / gs:// URI (read in place, through pyarrow)."""
    trials, epochs, steps, probes, surfaces, specs = [], [], [], [], [], []
    for given in paths:
        d = _Dir(given)
        try:
            t, e, meta, found = _load_one(d, multi=len(paths) > 1)
        except OSError as err:  # the store: unreachable, no credentials, access denied
            raise ResultsError(storage.explain(str(d), err)) from None
        specs.append(meta)
        trials.append(t)
        epochs.append(e)
        for name, into in ((STEPS, steps), (PROBES, probes), (SURFACES, surfaces)):
            if name in found:
                into.append(found[name])
    t = label_variants(pd.concat(trials, ignore_index=True))

    def known(frames: list) -> pd.DataFrame | None:  # rows of trials the trials table knows
        if not frames:
            return None
        df = pd.concat(frames, ignore_index=True)
        return df[df["trial_id"].isin(t["trial_id"])].reset_index(drop=True)

    return Results(trials=t, epochs=known(epochs), steps=known(steps), probes=known(probes),
                   surfaces=known(surfaces),
                   specs=specs, paths=[str(p) for p in paths])


def _load_one(d: _Dir, multi: bool) -> tuple[pd.DataFrame, pd.DataFrame, dict, dict[str, pd.DataFrame]]:
    import pyarrow.fs as pafs

    fix = f"`vggbn export {d}` rewrites the export from Ray's files"
    example = "e.g. results/quick" + (", s3://BUCKET/PREFIX/NAME" if d.remote else "")
    kind = d.kind()
    if kind != pafs.FileType.Directory:  # on object storage: no object under that prefix
        what, fix_where = ((storage.missing(d.fs, d.uri, d.root) if d.remote and kind == pafs.FileType.NotFound
                           else ("no such directory", None)))
        raise ResultsError(f"{d}: {what}.\nFix: " + (fix_where or "give the directory of a finished or "
                                                     f"interrupted sweep, {example}"))
    if not d.is_file(TRIALS):
        raise ResultsError(f"{d}: no {TRIALS} here.\nFix: give the directory of a finished or interrupted "
                           f"sweep, {example}, or run `vggbn export {d}` first")
    t, meta = _read(d, TRIALS, fix)
    e = _read(d, EPOCHS, fix)[0] if d.is_file(EPOCHS) else pd.DataFrame(columns=["trial_id", "epoch"])
    bad = sorted(set(t["status"].astype(str)) - set(STATUSES))
    if bad:
        raise ResultsError(f"{d.show(TRIALS)}: unknown status {bad[0]!r}.\nFix: {fix}")
    # a config field added since this export was written: its default is what the trials had
    t = t.assign(**{k: [TrialConfig.model_fields[k].default] * len(t) for k in CONFIG_KEYS
                    if k not in t.columns and "preset" in t.columns})
    prefix = (str(t["sweep"].iloc[0]) if len(t) else d.name) + "/"
    if multi:  # trial ids are unique per sweep only
        t = t.assign(trial_id=prefix + t["trial_id"])
        e = e.assign(trial_id=prefix + e["trial_id"])
    found = {}
    for name in (STEPS, PROBES, SURFACES):
        if d.is_file(name):
            s = _read(d, name, fix if name != SURFACES else
                      f"delete {d.show(name)} and run `vggbn landscape {d}` again")[0]
            found[name] = s.assign(trial_id=prefix + s["trial_id"]) if multi else s
    return t, e, meta, found


def swept_keys(trials: pd.DataFrame) -> list[str]:
    """Config keys that vary between variants (seed excluded)."""
    keys = [k for k in CONFIG_KEYS if k in trials.columns and k not in EXECUTION_KEYS]
    return [k for k in keys if trials[k].map(str).nunique() > 1]


def label_variants(trials: pd.DataFrame) -> pd.DataFrame:
    """Add `variant` (a stable id), `label` and `section` columns.

    With presets the label and section are the preset's (the study's rows); otherwise the label is
    the swept flags (e.g. 'bn=True, lr=0.001') and the section is 'Variants'.
    """
    t = trials.copy()
    keys = [k for k in CONFIG_KEYS if k in t.columns and k not in EXECUTION_KEYS]
    t["variant"] = t[keys].map(str).agg("|".join, axis=1) if keys else "all"
    swept = swept_keys(t)
    if "preset" in t and t["preset"].notna().any():  # flags that vary within a preset's trials
        label_keys = [k for k in swept if k != "preset"
                      and (t.groupby(t["preset"].astype(str))[k].agg(lambda c: c.map(str).nunique()) > 1).any()]
    else:
        label_keys = swept

    def label(row) -> str:
        preset = row.get("preset")
        flags = ", ".join(f"{k}={_fmt(row[k])}" for k in label_keys)
        if isinstance(preset, str) and preset in PRESETS:
            base = PRESETS[preset]["label"]
            return f"{base} ({flags})" if flags else base
        return flags or "all trials"

    def section(row) -> str:
        preset = row.get("preset")
        return PRESETS[preset]["section"] if isinstance(preset, str) and preset in PRESETS else "Variants"

    t["label"] = t.apply(label, axis=1) if len(t) else pd.Series(dtype=str)
    t["section"] = t.apply(section, axis=1) if len(t) else pd.Series(dtype=str)
    return t


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return str(v)


def status_counts(trials: pd.DataFrame) -> pd.DataFrame:
    """Per variant: how many trials ended in each status (all statuses shown, zeros included)."""
    statuses = list(STATUSES)
    c = trials.groupby("variant")["status"].value_counts().unstack(fill_value=0)
    return c.reindex(columns=statuses, fill_value=0)
