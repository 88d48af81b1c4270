"""The export files (trials/epochs/steps/probes/surfaces.parquet): the one writer and the one reader.

Every export file is a parquet file whose schema metadata holds vggbn's JSON under
schema.PARQUET_META_KEY: `schema_version` (always), and in the export's own files the stored spec,
the driver's provenance and the budget. Reading one checks what makes it vggbn's: it parses, it has
the columns every reader relies on (REQUIRED), its metadata is a mapping and its schema_version is
one this vggbn reads. Column types are the reader's business (analysis.columns types them).

Two ways in, one parse: `ExportDir` reads a directory as given (analysis' load: messages name the
path the user typed), `Experiment.read_export` reads one of an experiment (the plan's earlier
experiments, the landscape job). No Ray.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

from vggbn import uri as storage
from vggbn.errors import VggbnError
from vggbn.schema import EPOCHS, PARQUET_META_KEY, PROBES, SCHEMA_VERSION, STEPS, SURFACES, TRIALS

FINISHED = ("completed", "early_stopped", "diverged")  # the statuses of a trial that ran to its end

# the columns every reader of each file relies on
REQUIRED = {TRIALS: ("trial_id", "sweep", "status"), EPOCHS: ("trial_id", "epoch"),
            STEPS: ("trial_id", "step"), PROBES: ("trial_id", "step"), SURFACES: ("trial_id", "kind")}


def report_dir(path: str | Path) -> Path:
    """Where an experiment's report goes unless --out says: <path>/report for a local one,
    reports/<name>/ (in the current directory) for one in a bucket (read in place, never synced)."""
    path = str(path)
    if storage.is_remote(path):
        return Path("reports") / storage.name(storage.normalize(path))
    return Path(storage.normalize(path) if "://" in path else path) / "report"


def trial_status(ray_status: str | None, last: dict, epochs: int, error: str | None) -> str:
    """A trial's status in the export (schema.STATUSES) from Ray's status of it ("TERMINATED",
    "ERROR", ...), its last reported epoch, its planned epochs and its recorded error: the export and
    `vggbn status` both say this, so they agree; a status is never invented."""
    if ray_status == "ERROR" or error:
        return "errored"
    if last.get("diverged"):
        return "diverged"
    if ray_status == "TERMINATED":
        return "completed" if last.get("epoch", 0) >= epochs else "early_stopped"
    return "incomplete"


def parse(raw: bytes, name: str, shown: str, fix: str, error: type[VggbnError]):
    """(DataFrame, vggbn's metadata) of export file `name` from its bytes; `error(what, fix)` naming
    `shown` when it is damaged, not vggbn's, or written by a newer vggbn."""
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))  # the frame and vggbn's metadata from one parse
        df = table.to_pandas()
        meta = json.loads((table.schema.metadata or {}).get(PARQUET_META_KEY, b"{}"))
    except Exception as e:  # noqa: BLE001  (pyarrow raises several kinds for a damaged file)
        raise error(f"{shown}: not a readable parquet file ({type(e).__name__}: {' '.join(str(e).split())[:200]}).",
                    fix) from None
    missing = [c for c in REQUIRED.get(name, ()) if c not in df.columns]
    if missing or not isinstance(meta, dict):
        raise error(f"{shown}: not a vggbn export (no column {', '.join(missing) or 'metadata'}).", fix)
    if meta.get("schema_version", 0) > SCHEMA_VERSION:
        raise error(f"{shown}: written by a newer vggbn (schema {meta['schema_version']}; this one reads "
                    f"up to {SCHEMA_VERSION}).", "upgrade vggbn")
    return df, meta


def read_export(fs, path: str, name: str, shown: str, fix: str, error: type[VggbnError]):
    """(DataFrame, metadata) of the export file at `path` on pyarrow filesystem `fs`, (None, {})
    when there is none; see parse(). An OSError of the store (unreachable, denied) is the caller's
    to word: it knows the directory."""
    import pyarrow.fs as pafs

    try:
        if fs.get_file_info(path).type != pafs.FileType.File:
            return None, {}
        with fs.open_input_stream(path) as f:
            raw = f.read()
    except FileNotFoundError:
        return None, {}
    return parse(raw, name, shown, fix, error)


def write_export(exp, name: str, df, meta: dict) -> None:
    """`df` as export file `name` of Experiment `exp` (one atomic write), with vggbn's metadata."""
    import pyarrow as pa

    table = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    exp.write_parquet(name, table.replace_schema_metadata(
        {**(table.schema.metadata or {}), PARQUET_META_KEY: json.dumps(meta).encode()}))


class ExportDir:
    """One sweep directory to read, a local path or an s3:// / gs:// URI, through its pyarrow
    filesystem: the bucket is read in place, nothing is synced first. Messages name a local file
    by the path as given; `error`: the VggbnError subclass the reader raises."""

    def __init__(self, given: str | Path, error: type[VggbnError]):
        self.given, self.error = str(given), error
        try:
            self.uri = storage.normalize(self.given)
            self.fs, self.root = storage.filesystem(self.uri)
        except storage.StorageError as e:
            raise error(e.what, e.fix) from None
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

    def check(self) -> None:
        """A sweep directory with an export (its trials.parquet) before any file is parsed, else
        error(what, fix) naming it: `vggbn report` and `landscape` check this before they import
        pandas, so that a wrong path answers at once (analysis' load checks the same way)."""
        import pyarrow.fs as pafs

        example = "e.g. results/quick" + (", s3://BUCKET/PREFIX/NAME" if self.remote else "")
        try:
            kind = self.kind()
            if kind != pafs.FileType.Directory:  # on object storage: no object under that prefix
                what, fix = (storage.missing(self.fs, self.uri, self.root) if self.remote
                             and kind == pafs.FileType.NotFound else ("no such directory", None))
                raise self.error(f"{self}: {what}.", fix or f"give the directory of a finished or interrupted "
                                                            f"sweep, {example}")
            exported = self.is_file(TRIALS)
        except OSError as err:  # the store: unreachable, no credentials, access denied
            raise self.error(*storage.explain(str(self), err)) from None
        if not exported:
            raise self.error(f"{self}: no {TRIALS} here.", f"give the directory of a finished or interrupted "
                             f"sweep, {example}, or run `vggbn export {self}` first")

    def read_export(self, name: str, fix: str):
        """(DataFrame, metadata) of an export file here ((None, {}) when absent); OSError: the store's."""
        return read_export(self.fs, f"{self.root}/{name}", name, self.show(name), fix, self.error)
