"""Load exported sweeps (trials/epochs/steps/probes/surfaces.parquet) into typed DataFrames.

    from analysis.results import load
    r = load("results/quick")                   # or "s3://bucket/prefix/quick", or several sweeps
    r.trials, r.epochs, r.steps, r.probes, r.surfaces   # pandas; steps/probes/surfaces None when absent
    r.variants()                                # one row per variant (config without its seed)
    r.with_config("epochs")                     # each epoch with its trial's config
    r.top_trials(3)                             # the best trials by val_acc (test_acc without a val split)
    r.spec(), r.provenance()                    # the stored spec.yaml as data; versions, commits, hosts

A *variant* is a trial's config without its seed (and without execution-only knobs such as the
device or thread count). Early-stopped, errored, diverged and incomplete trials are kept and
counted, never dropped silently. Column types: see analysis/columns.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from vggbn import uri as storage
from vggbn.config import TrialConfig
from vggbn.errors import ResultsError
from vggbn.schema import EPOCHS, PBT_DONOR, PROBES, SPEC_FILE, STEPS, SURFACES, TRIALS
from vggbn.store.exports import ExportDir

from analysis import columns
from analysis.frames import CONFIG_KEYS, EXECUTION_KEYS, label_variants, status_counts, swept_keys, table_order
from analysis.stats import mean_ci

FRAMES = ("trials", "epochs", "steps", "probes", "surfaces")


@dataclass(repr=False)
class Results:
    """The frames of one or more exported sweeps (see load()). With several sweeps, trial ids are
    '<sweep>/<id>' ('<sweep>#2/<id>' for a second sweep of the same name, e.g. two exports of one
    sweep), in every frame. `specs`: each sweep's parquet metadata (schema_version, spec, driver,
    budget); `paths`: the directories as given.

    variants(): one row per variant; with_config(frame): rows with their trial's config;
    top_trials(n): the best trials; spec(sweep), provenance(); sweeps, swept, partial."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    steps: pd.DataFrame | None
    probes: pd.DataFrame | None = None
    surfaces: pd.DataFrame | None = None
    specs: list[dict] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    sources: list[dict] = field(default_factory=list)  # per sweep: name, path, prefix, meta, spec

    def __repr__(self) -> str:
        sizes = ", ".join(f"{n} {len(getattr(self, n))}" if getattr(self, n) is not None else f"no {n}"
                          for n in FRAMES[1:])
        counts = self.trials["status"].value_counts()
        return (f"Results({', '.join(f'{s} ({p})' for s, p in zip(self.sweeps, self.paths))}: "
                f"{len(self.trials)} trials ({', '.join(f'{v} {k}' for k, v in counts.items() if v)}); "
                f"{self.trials['variant'].nunique()} variants; rows: {sizes})")

    @property
    def partial(self) -> bool:
        return bool((self.trials["status"] == "incomplete").any())

    @property
    def sweeps(self) -> list[str]:
        """The sweeps' names, in the order given."""
        return [s["name"] for s in self.sources]

    @property
    def swept(self) -> list[str]:
        """Config keys that vary between variants (seed excluded): what a comparison is about."""
        return swept_keys(self.trials)

    def _source(self, sweep: str | None) -> dict:
        if sweep is None and len(self.sources) == 1:
            return self.sources[0]
        found = [s for s in self.sources if s["name"] == sweep]
        if not found:
            raise ResultsError(f"{'no sweep ' + repr(sweep) if sweep else 'several sweeps'} loaded "
                               f"(sweeps: {', '.join(self.sweeps)}).", f"name one, e.g. spec({self.sweeps[0]!r})")
        return found[0]

    def spec(self, sweep: str | None = None) -> dict:
        """The sweep's stored spec.yaml as data (read through the same filesystem as the parquet
        files; the export's copy when the directory has no spec.yaml). `sweep`: its name, needed
        when several sweeps are loaded."""
        src = self._source(sweep)
        copy = (src["meta"] or {}).get("spec")
        if isinstance(src["spec"], dict) or (src["spec"] is None and isinstance(copy, dict)):
            return src["spec"] or copy
        raise ResultsError(f"{src['spec_file']}: {src['spec'] or 'missing, and the export has no copy'}.",
                           "restore the file as the sweep wrote it" + (
                               "; the export's copy is Results.specs[i]['spec']" if isinstance(copy, dict) else ""))

    def provenance(self) -> pd.DataFrame:
        """One row per sweep: where it was read from, the export's schema version, who exported it
        (versions, git commit, host, time: the `export_*` columns) and what its trials ran with
        (the distinct git commits, vggbn versions, hosts and devices over its trials). Each trial's
        own provenance is in the trials' `prov_*` columns."""
        rows = []
        for src in self.sources:
            meta = src["meta"] or {}
            t = self.trials[self.trials["trial_id"].str.startswith(src["prefix"])]
            driver = {f"export_{k}": v for k, v in (meta.get("driver") or {}).items()
                      if k not in ("device", "device_name")}
            trial = {f"trial_{k}s": ", ".join(map(str, dict.fromkeys(t[f"prov_{k}"].dropna())))
                     for k in ("git_commit", "vggbn_version", "hostname", "device_name") if f"prov_{k}" in t}
            rows.append({"sweep": src["name"], "path": src["path"], "trials": len(t),
                         "schema_version": meta.get("schema_version"), **driver, **trial})
        return pd.DataFrame(rows).set_index("sweep")

    def with_config(self, frame: str | pd.DataFrame = "epochs", keys: list[str] | None = None) -> pd.DataFrame:
        """Rows of `frame` ("epochs", "steps", "probes", "surfaces", or any frame with a trial_id
        column) with their trial's sweep, variant, label, section, status and config (`keys`: the
        trial columns to add, default every config key). A trial column whose name the frame has
        already (lr: the rate in force at that epoch) comes as NAME_config."""
        df = getattr(self, frame, None) if isinstance(frame, str) else frame
        if isinstance(frame, str) and frame not in FRAMES[1:]:
            raise ResultsError(f"with_config({frame!r}): no such frame.",
                               f"one of {', '.join(FRAMES[1:])}, or a DataFrame with a trial_id column")
        if df is None:
            raise ResultsError(f"{', '.join(self.paths)}: no {frame}.parquet (not recorded in this sweep).",
                               {"surfaces": "run `vggbn landscape` on the sweep"}.get(
                                   frame, "record them (record_steps, probe_every) in a new sweep"))
        if "trial_id" not in df:
            raise ResultsError("with_config: the frame has no trial_id column.",
                               "pass one of the Results frames or a frame derived from one")
        keys = [k for k in CONFIG_KEYS if k in self.trials] if keys is None else list(keys)
        unknown = [k for k in keys if k not in self.trials]
        if unknown:
            raise ResultsError(f"with_config: no trial column {unknown[0]!r}.", f"one of the columns "
                               f"of Results.trials, e.g. {', '.join(self.swept or CONFIG_KEYS[:3])}")
        cols = list(dict.fromkeys(["trial_id", "sweep", "variant", "label", "section", "status", *keys]))
        return df.merge(self.trials[cols], on="trial_id", how="left", suffixes=("", "_config"),
                        validate="many_to_one")

    def variants(self, metric: str = "test_acc", keys: list[str] | None = None) -> pd.DataFrame:
        """One row per variant (a config without its seed), indexed by its id, in the comparison
        table's order: label, section, sweep(s), the values of `keys` (default: the swept keys),
        `trials` (all seeds) and the status counts, and over the completed trials' final `metric`:
        n, mean, std and the 95% t CI (analysis.stats.mean_ci, as in the comparison table)."""
        t = self.trials
        if metric not in t:
            raise ResultsError(f"variants({metric!r}): no such column in the trials.",
                               "a metric such as test_acc, val_acc, train_loss, best_test_acc")
        keys = self.swept if keys is None else list(keys)
        bad = [k for k in keys if k not in CONFIG_KEYS or k in EXECUTION_KEYS]
        if bad:
            raise ResultsError(f"variants(keys=...): {bad[0]!r} is not part of a variant.",
                               f"config keys other than {', '.join(sorted(EXECUTION_KEYS))}, e.g. bn, width, lr")
        done = t[t["status"] == "completed"]
        first = table_order(t.drop_duplicates("variant")).set_index("variant")
        out = first[["label", "section", *dict.fromkeys(keys)]].copy()
        out.insert(2, "sweep", t.groupby("variant")["sweep"].agg(lambda s: ", ".join(dict.fromkeys(s))))
        out["trials"] = t.groupby("variant").size()
        out = out.join(status_counts(t).add_prefix("n_"))
        ci = {v: mean_ci(pd.to_numeric(g[metric], errors="coerce").dropna()) for v, g in done.groupby("variant")}
        out["n"] = done.groupby("variant")[metric].count().reindex(out.index, fill_value=0).astype("int64")
        for i, name in enumerate(("mean", "std", "ci_low", "ci_high")):
            out[name] = out.index.map(lambda v, i=i: ci.get(v, (float("nan"),) * 4)[i]).astype("float64")
        return out

    def top_trials(self, n: int = 3, metric: str | None = None) -> pd.DataFrame:
        """The n best trials by their final `metric` (default val_acc, the model-selection metric;
        test_acc when no trial has a validation split), best first: lowest for a loss. Trials
        without the metric (not started, errored) are left out."""
        t = self.trials
        metric = metric or ("val_acc" if t["val_acc"].notna().any() else "test_acc")
        if metric not in t:
            raise ResultsError(f"top_trials: no column {metric!r} in the trials.",
                               "a metric such as val_acc, test_acc, val_loss")
        return t.dropna(subset=[metric]).sort_values(metric, ascending=metric.endswith("loss"),
                                                     kind="stable").head(n)


def _read(d: ExportDir, name: str, fix: str) -> tuple[pd.DataFrame, dict]:
    """A parquet file of the export (vggbn.store.exports reads and checks it), typed
    (analysis.columns), and its vggbn metadata; ResultsError when it is damaged."""
    df, meta = d.read_export(name, fix)  # an OSError here is the store's (unreachable, denied): load() says so
    try:
        return columns.typed(df, name), meta
    except columns.ColumnError as e:
        raise ResultsError(f"{d.show(name)}: {e}.", fix) from None


def load(*paths: str | Path) -> Results:
    """One or more sweep directories (each with trials.parquet) -> Results with variants labelled
    and every column typed (analysis.columns). A directory is a local path or an s3:// / gs:// URI
    (read in place through pyarrow, nothing synced; a query of pyarrow's options may follow, e.g.
    ?endpoint_override=HOST:PORT&scheme=http). ResultsError says what is wrong and the fix."""
    if not paths:
        raise ResultsError("load(): no sweep directory given.",
                           "load('results/NAME'), or several: load('results/a', 's3://bucket/prefix/b')")
    frames: dict[str, list[pd.DataFrame]] = {n: [] for n in FRAMES}
    specs, sources, prefixes = [], [], set()
    for given in paths:
        d = ExportDir(given, ResultsError)
        try:
            found, meta, src = _load_one(d, multi=len(paths) > 1, taken=prefixes)
        except OSError as err:  # the store: unreachable, no credentials, access denied
            raise ResultsError(*storage.explain(str(d), err)) from None
        specs.append(meta)
        sources.append(src)
        for name, df in found.items():
            frames[name].append(df)
    t = columns.typed(label_variants(pd.concat(frames["trials"], ignore_index=True)), TRIALS)
    files = dict(zip(FRAMES, (TRIALS, EPOCHS, STEPS, PROBES, SURFACES)))

    def known(name: str) -> pd.DataFrame | None:  # rows of trials the trials table knows
        if not frames[name]:
            return None
        df = columns.typed(pd.concat(frames[name], ignore_index=True), files[name])
        return df[df["trial_id"].isin(t["trial_id"])].reset_index(drop=True)

    return Results(trials=t, epochs=known("epochs"), steps=known("steps"), probes=known("probes"),
                   surfaces=known("surfaces"), specs=specs, paths=[str(p) for p in paths], sources=sources)


def _load_one(d: ExportDir, multi: bool, taken: set[str]) -> tuple[dict[str, pd.DataFrame], dict, dict]:
    """One sweep's frames (trial ids prefixed when several sweeps load), its metadata, its source."""
    import yaml

    fix = f"`vggbn export {d}` rewrites the export from Ray's files"
    d.check()  # a directory with a trials.parquet (vggbn.store.exports words what is not)
    t, meta = _read(d, TRIALS, fix)
    if t.empty:  # nothing to label, compare or plot
        raise ResultsError(f"{d.show(TRIALS)}: no trials in it (none had started when it was exported).",
                           f"`vggbn status {d}` says where the sweep stands; `vggbn resume {d}` runs "
                           f"its trials and exports them")
    found = {"trials": t, "epochs": _read(d, EPOCHS, fix)[0] if d.is_file(EPOCHS)
             else columns.typed(pd.DataFrame(columns=["trial_id", "epoch"]), EPOCHS)}
    # a config field added since this export was written: its default is what the trials had
    found["trials"] = t.assign(**{k: [TrialConfig.model_fields[k].default] * len(t) for k in CONFIG_KEYS
                                  if k not in t.columns and "preset" in t.columns})
    for name, file in (("steps", STEPS), ("probes", PROBES), ("surfaces", SURFACES)):
        if d.is_file(file):
            found[name] = _read(d, file, fix if file != SURFACES else
                                f"delete {d.show(file)} and run `vggbn landscape {d}` again")[0]
    name = str(t["sweep"].iloc[0])
    prefix, k = name + "/", 1
    while multi and prefix in taken:  # trial ids are unique per sweep only: a name given twice
        k += 1
        prefix = f"{name}#{k}/"
    taken.add(prefix)
    if multi:
        for n, df in found.items():
            df = df.assign(trial_id=prefix + df["trial_id"])
            if PBT_DONOR in df:  # a PBT trial's donor, in the same sweep: the schedule figure joins on it
                df[PBT_DONOR] = prefix + df[PBT_DONOR]
            found[n] = df
    spec = None
    if d.is_file(SPEC_FILE):
        try:
            spec = yaml.safe_load(d.read(SPEC_FILE))
        except yaml.YAMLError as e:
            spec = f"not readable YAML ({' '.join(str(e).split())[:200]})"
        spec = spec if isinstance(spec, (dict, str)) else "not a mapping"
    return found, meta, {"name": name, "path": str(d), "prefix": prefix if multi else "", "meta": meta,
                         "spec": spec, "spec_file": d.show(SPEC_FILE)}
