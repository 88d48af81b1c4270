"""An experiment directory `<storage>/<name>/`: its URI and filesystem, its claim, atomic writes,
the stored spec and each trial's resolved config. No Ray import here.

Storage is a local directory, `file://`, `s3://` or `gs://` (pyarrow's filesystems, which Ray uses
too; vggbn/uri.py). An object-storage URI may carry pyarrow's options as a query
(`s3://b/p?endpoint_override=HOST:PORT&scheme=http`): the experiment is `<storage>/<name>` with the
query kept at the end, and Ray gets the filesystem built from it plus the plain path. Every file
vggbn writes appears whole or not at all: locally a temporary file renamed into place; on object
storage one put (an object is visible only once its upload completed).

One experiment directory = one sweep. `claim` creates `vggbn-claim.json` only if it does not
exist: locally with an exclusive create (O_EXCL), on S3 with a conditional put (If-None-Match: *),
so of two starts at once exactly one wins. Other stores (gs://) check, then write: two starts
within the same moment could both pass there.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any

from vggbn import uri as storage
from vggbn.config import TrialConfig
from vggbn.errors import ExperimentError, StorageError
from vggbn.files import write_atomic
from vggbn.schema import (CLAIM_FILE, SCHEMA_VERSION, SPEC_FILE, TRIAL_CONFIG_FILE, TRIAL_DIR, TRIAL_ERROR_FILE,
                          TRIALS)
from vggbn.spec.model import SweepSpec, stored_spec
from vggbn.store import exports


FULL_BYTES = 1 << 20  # locally, less free than this after a failed run: the disk filled
STORAGE_ERRNOS = {errno.ENOSPC: "no space left on its disk", errno.EDQUOT: "over its disk quota",
                  errno.EROFS: "on a read-only filesystem", errno.EACCES: "not writable (permission denied)",
                  errno.EPERM: "not writable (operation not permitted)"}


def normalize(path: str) -> str:
    """A local path -> absolute path; file:// -> its local path; s3:// and gs:// stay URIs."""
    try:
        return storage.normalize(path)
    except storage.StorageError as e:
        raise ExperimentError(e.what, e.fix) from None


class Experiment:
    def __init__(self, path: str):
        self.uri = normalize(path)
        self.local = not storage.is_remote(self.uri)
        try:
            self.fs, self.root = storage.filesystem(self.uri)
        except storage.StorageError as e:
            raise ExperimentError(e.what, e.fix) from None
        self.storage, self.name = storage.parent_and_name(self.uri)

    def __repr__(self) -> str:
        return f"Experiment({self.uri!r})"

    def join(self, *parts: str) -> str:
        """A URI (or local path) inside the experiment, for messages: the query stays at the end."""
        return storage.join(self.uri, *parts)

    def ray_path(self):
        """(path, filesystem) for Ray's Tuner.restore / ExperimentAnalysis: on object storage the
        plain path and the filesystem built from the URI (its query's endpoint travels with it)."""
        return (self.root, self.fs) if not self.local else (self.uri, None)

    def ray_storage(self):
        """(storage_path, storage_filesystem) for Ray's RunConfig; the run's name is self.name."""
        return (self.root.rpartition("/")[0], self.fs) if not self.local else (self.storage, None)

    def error(self, e: BaseException, doing: str = "cannot be read") -> ExperimentError:
        """An OSError from the store (unreachable, no bucket, denied) as a message for people."""
        return ExperimentError(*storage.explain(self.uri, e, doing))

    def path(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    def trial_dir(self, trial_id: str) -> str:
        return self.path(TRIAL_DIR.format(trial_id=trial_id))

    # ------------------------------------------------------------------ files
    def read_bytes(self, name: str) -> bytes | None:
        """The file's bytes, or None when it does not exist."""
        import pyarrow.fs as pafs

        p = self.path(name)
        try:
            if self.fs.get_file_info(p).type != pafs.FileType.File:
                return None
            with self.fs.open_input_stream(p) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        import pyarrow.fs as pafs

        return self.fs.get_file_info(self.path(name)).type != pafs.FileType.NotFound

    def write_bytes(self, name: str, data: bytes) -> None:
        """Atomic: a temporary file renamed into place (local), one put (object storage)."""
        p = self.path(name)
        if self.local:
            try:
                write_atomic(Path(p), data)
            except OSError as e:  # read-only, full, denied: said for people, the old file left whole
                raise self.error(e, f"cannot write {name}") from None
            return
        self.fs.create_dir(p.rsplit("/", 1)[0], recursive=True)
        with self.fs.open_output_stream(p) as f:
            f.write(data)

    def write_parquet(self, name: str, table) -> None:
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(table, buf)
        self.write_bytes(name, buf.getvalue())

    def read_export(self, name: str):
        """(DataFrame, vggbn's metadata) of an export file (store/exports.py: schema_version and the
        required columns checked); (None, {}) when absent. ExperimentError (with the fix) when the
        store cannot be read or the file is damaged, not vggbn's or from a newer vggbn."""
        fix = (f"`vggbn export {self.uri}` rewrites the export"
               + ("" if name == TRIALS else f"; for {name}, delete it and run this again"))
        try:
            return exports.read_export(self.fs, self.path(name), name, self.join(name), fix, ExperimentError)
        except OSError as e:  # unreachable, denied
            raise self.error(e) from None

    def remove(self, name: str) -> bool:
        try:
            if not self.exists(name):
                return False
            self.fs.delete_file(self.path(name))
            return True
        except (OSError, FileNotFoundError):
            return False

    def listdir(self, sub: str = "") -> list[str]:
        """Names directly in the experiment directory, or in its subdirectory `sub` ([] when it is
        unreadable or missing)."""
        import pyarrow.fs as pafs

        try:
            return [i.base_name for i in self.fs.get_file_info(pafs.FileSelector(self.path(sub) if sub else self.root))]
        except (OSError, FileNotFoundError):
            return []

    def failure(self, exc: BaseException | None = None) -> StorageError | None:
        """The storage's part in a run that failed with `exc`, for people: a full disk, a quota, a
        read-only or denied directory (an OSError anywhere in the exception's chain, or, locally,
        no space left now; without `exc`, that alone). None when the storage is not why."""
        code, seen, stack = None, set(), [exc]
        while stack and code is None:
            e = stack.pop()
            if e is None or id(e) in seen:
                continue
            seen.add(id(e))
            if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
                code = e.errno
            stack += [e.__cause__, e.__context__, getattr(e, "cause", None)]
        free = ""
        if self.local:
            with contextlib.suppress(OSError):
                usage = shutil.disk_usage(self.root)
                free = f" ({usage.free / 2**20:,.1f} MB free of {usage.total / 2**20:,.0f} MB)"
                if code is None and usage.free < FULL_BYTES:
                    code = errno.ENOSPC
        if code is None:
            return None
        what = STORAGE_ERRNOS[code]
        return StorageError(f"{self.uri}: {what}{free if code in (errno.ENOSPC, errno.EDQUOT) else ''}: the run "
                            f"stopped; its trials, checkpoints and Ray's snapshot are kept (vggbn keeps a last good "
                            f"copy of the snapshot).",
                            f"{storage.local_fix(code)}, then `vggbn resume {self.uri}`: it continues the same trials")

    def has_ray_state(self) -> bool:
        return any(n.startswith("experiment_state") for n in self.listdir())

    # ------------------------------------------------------------------ one experiment = one sweep
    def claim(self, sweep: str) -> None:
        """Make this directory this sweep's, atomically; ExperimentError if it is taken."""
        body = json.dumps({"schema_version": SCHEMA_VERSION, "sweep": sweep, "host": socket.gethostname(),
                           "pid": os.getpid(), "time": time.time()}).encode()
        if self.local:
            try:
                os.makedirs(self.root, exist_ok=True)
                fd = os.open(self.path(CLAIM_FILE), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                raise self._taken() from None
            except OSError as e:  # a file on the way, /proc, /dev/null, read-only, denied
                raise self.error(e, "cannot be created") from None
            with os.fdopen(fd, "wb") as f:
                f.write(body)
        elif storage.scheme(self.uri) == "s3":
            self._claim_s3(body)
        else:  # gs://: no conditional create through pyarrow; check, then write
            if self.exists(CLAIM_FILE):
                raise self._taken()
            self.write_bytes(CLAIM_FILE, body)
        if self.has_ray_state():  # written before claims existed: taken all the same
            self.release_claim()
            raise self._taken()

    def _claim_s3(self, body: bytes) -> None:
        if self.put_if(CLAIM_FILE, body, if_none_match=True) is None:
            raise self._taken()

    def put_if(self, name: str, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> str | None:
        """An S3 put of `name` on a condition (If-None-Match: * / If-Match: ETAG) through boto3
        (pyarrow has no conditional put): the new ETag, or None when the condition failed (another
        driver got there first). ExperimentError when the store cannot be written."""
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, key = storage.bucket_and_key(self.uri)
        kw = {"IfNoneMatch": "*"} if if_none_match else {"IfMatch": if_match} if if_match else {}
        try:  # boto3 with the URI's endpoint, region and credentials
            return storage.s3_client(self.uri).put_object(Bucket=bucket, Key=f"{key}/{name}".lstrip("/"),
                                                          Body=body, **kw)["ETag"]
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412", "ConditionalRequestConflict",
                                                           "NoSuchKey"):
                return None
            raise self.error(e, f"cannot write {name}") from None
        except BotoCoreError as e:  # no credentials, endpoint unreachable
            raise self.error(e, f"cannot write {name}") from None

    def _taken(self) -> ExperimentError:
        who = ""
        try:
            c = json.loads(self.read_bytes(CLAIM_FILE) or b"{}")
            who = (f" (claimed by {c.get('host')} pid {c.get('pid')} at "
                   f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(c.get('time', 0)))})")
        except (OSError, ValueError, TypeError):
            pass
        return ExperimentError(f"{self.uri} already holds a sweep named {self.name}{who}.",
                               f"`vggbn resume {self.uri}` to continue it, or --set name=OTHER for a new one.")

    def release_claim(self) -> None:
        """Undo a start that failed before any trial ran, so a retry is not blocked."""
        for name in (SPEC_FILE, CLAIM_FILE):
            self.remove(name)

    # ------------------------------------------------------------------ what was run
    def write_spec(self, spec: SweepSpec) -> None:
        import yaml

        self.write_bytes(SPEC_FILE, yaml.safe_dump(spec.model_dump(mode="json"), sort_keys=False).encode())

    def spec(self) -> SweepSpec:
        """The stored spec, read as data, with storage and name where the directory is now (it may
        have been moved or downloaded)."""
        import pyarrow.fs as pafs

        try:
            raw = self.read_bytes(SPEC_FILE)
            kind = self.fs.get_file_info(self.root).type if raw is None else None
        except OSError as e:  # unreachable, no credentials, access denied
            raise self.error(e) from None
        if raw is None:
            fix = None
            if kind == pafs.FileType.NotFound and not self.local:
                what, fix = storage.missing(self.fs, self.uri, self.root)
            else:
                what = ("a file, not a directory" if kind == pafs.FileType.File else "no such directory"
                        if kind == pafs.FileType.NotFound else
                        f"no {SPEC_FILE} here, so it is not a vggbn sweep directory")
            raise ExperimentError(f"{self.uri}: {what}.", fix or (
                "give a sweep's directory, <storage>/<name>/ as `vggbn sweep` writes it (e.g. results/quick"
                + ("" if self.local else ", s3://BUCKET/PREFIX/NAME") + ")"))
        where = self.join(SPEC_FILE)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise ExperimentError(f"{where}: not a text file.", "restore it from the sweep file that "
                                  "started this experiment") from None
        spec = stored_spec(text, where)
        return spec.model_copy(update={"storage": self.storage, "name": self.name})

    def write_trial_config(self, trial_id: str, cfg: TrialConfig) -> None:
        self.write_bytes(f"{TRIAL_DIR.format(trial_id=trial_id)}/{TRIAL_CONFIG_FILE}", json.dumps(
            {"schema_version": SCHEMA_VERSION, "config": cfg.to_flat()}, indent=1).encode())

    def read_trial_config(self, trial_id: str) -> dict[str, Any] | None:
        """The trial's resolved config as written when it started (vggbn-config.json), or None;
        store/trial_config.py is what reads a trial's config for its users."""
        try:
            raw = self.read_bytes(f"{TRIAL_DIR.format(trial_id=trial_id)}/{TRIAL_CONFIG_FILE}")
            doc = json.loads(raw) if raw is not None else None
        except (OSError, ValueError):
            return None
        return doc.get("config") if isinstance(doc, dict) and isinstance(doc.get("config"), dict) else None

    def write_trial_error(self, trial_id: str, reason: str) -> None:
        self.write_bytes(f"{TRIAL_DIR.format(trial_id=trial_id)}/{TRIAL_ERROR_FILE}",
                         json.dumps({"time": time.time(), "error": reason}).encode())

    def trial_error(self, trial_id: str) -> str | None:
        try:
            raw = self.read_bytes(f"{TRIAL_DIR.format(trial_id=trial_id)}/{TRIAL_ERROR_FILE}")
            return str(json.loads(raw)["error"]) if raw is not None else None
        except (OSError, ValueError, KeyError, TypeError):
            return "vggbn-error.json is unreadable"

