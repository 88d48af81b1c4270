"""One driver per experiment: the lease that `vggbn sweep`, `resume`, `extend` and `landscape`'s
writes hold while they run an experiment. A second driver exits 2 naming the holder.

- **Local disk**: an OS lock (fcntl.flock) on `vggbn-lease.lock`, held by the driver's process.
  The kernel lets go of it when that process ends, however it ends (SIGKILL, OOM killer, a
  reboot), so a crashed driver never blocks the next resume. Who holds it (host, pid, command,
  since) is in `vggbn-lease.json` beside it, for the refusal.
- **S3**: `vggbn-lease.json` created by a conditional put (If-None-Match: *), its heartbeat
  rewritten every HEARTBEAT_S by a put conditional on the holder's own ETag (If-Match). A lease
  whose heartbeat is older than STALE_S (a killed driver, a lost node) is taken over by a put
  conditional on that stale ETag: of two drivers taking it over at once, one wins. The heartbeat
  is the holder's clock read by the next driver's: hosts' clocks must agree to well within STALE_S.
- **Other object stores** (gs://): no conditional put through pyarrow; the same heartbeat,
  checked then written, so two starts in the same second could both pass.

`--take-over` (resume, extend, sweep --resume) takes an object store's lease from a driver the
user knows is dead without waiting STALE_S. A local lease cannot be taken over: while its lock is
held, its process is alive. Read-only commands (status, report, export of a finished sweep) take no lease.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import sys
import threading
import time

from vggbn import uri as storage
from vggbn.errors import ExperimentError
from vggbn.schema import LEASE_FILE, LEASE_LOCK, SCHEMA_VERSION
from vggbn.store.experiment import Experiment

HEARTBEAT_S = 15.0  # object storage: how often the holder says it is alive
STALE_S = 120.0  # object storage: a lease silent this long is taken over (8 heartbeats missed)


def _when(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


class Lease:
    """The lease of `exp` for `command` (what the refusal names), taken by `acquire()` and given
    back by `release()`; `with Lease(...)` does both."""

    def __init__(self, exp: Experiment, command: str, *, take_over: bool = False, heartbeat_s: float = HEARTBEAT_S,
                 stale_s: float = STALE_S):
        self.exp, self.command, self.take_over = exp, command, take_over
        self.heartbeat_s, self.stale_s = heartbeat_s, stale_s
        self.since = time.time()
        self.taken_over: dict | None = None  # the stale holder this lease replaced, if any
        self._fd: int | None = None
        self._etag: str | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def body(self) -> bytes:
        return json.dumps({"schema_version": SCHEMA_VERSION, "host": socket.gethostname(), "pid": os.getpid(),
                           "command": self.command, "since": self.since, "heartbeat": time.time()}).encode()

    # ------------------------------------------------------------------ taking it
    def acquire(self) -> None:
        if self.exp.local:
            self._acquire_local()
        else:
            self._acquire_remote()
            self._beat = threading.Thread(target=self._heartbeat, name="vggbn-lease", daemon=True)
            self._beat.start()

    def _acquire_local(self) -> None:
        try:
            os.makedirs(self.exp.root, exist_ok=True)
            fd = os.open(self.exp.path(LEASE_LOCK), os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as e:
            raise self.exp.error(e, "cannot take the experiment's lease") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._held(self._holder_local(), local=True) from None
        except OSError as e:  # a filesystem without locks
            os.close(fd)
            raise self.exp.error(e, "cannot lock the experiment (its filesystem has no file locks)") from None
        self._fd = fd
        try:
            self.exp.write_bytes(LEASE_FILE, self.body())
        except BaseException:
            self.release()
            raise

    def _acquire_remote(self) -> None:
        s3 = storage.scheme(self.exp.uri) == "s3"
        for _ in range(3):  # a holder that lets go between our reads: look again
            held, etag = self._read_doc()
            if held is None:
                if self._put(self.body(), if_none_match=True) if s3 else self._put_unconditional():
                    return
                continue
            silent = time.time() - float(held.get("heartbeat", 0))
            if silent < self.stale_s and not self.take_over:
                raise self._held(held, local=False)
            if self._put(self.body(), if_match=etag) if s3 else self._put_unconditional():
                self.taken_over = held
                why = f"over {self.stale_s:.0f} s" if silent >= self.stale_s else "--take-over"
                print(f"vggbn: {self.exp.uri}: took over the lease of {self._who(held)}, silent since "
                      f"{_when(float(held.get('heartbeat', 0)))} ({why})", file=sys.stderr)
                return
        raise self._held(self._read_doc()[0] or {}, local=False)

    def _read_doc(self) -> tuple[dict | None, str | None]:
        """(the lease's document, its ETag on S3), (None, None) if there is none."""
        if storage.scheme(self.exp.uri) == "s3":
            from botocore.exceptions import BotoCoreError, ClientError

            bucket, key = storage.bucket_and_key(self.exp.uri)
            try:
                got = storage.s3_client(self.exp.uri).get_object(Bucket=bucket, Key=f"{key}/{LEASE_FILE}".lstrip("/"))
                raw, etag = got["Body"].read(), got["ETag"]
            except ClientError as e:
                if e.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None, None
                raise self.exp.error(e, "cannot read the experiment's lease") from None
            except BotoCoreError as e:
                raise self.exp.error(e, "cannot read the experiment's lease") from None
        else:
            raw, etag = self.exp.read_bytes(LEASE_FILE), None
            if raw is None:
                return None, None
        try:
            doc = json.loads(raw)
            return (doc if isinstance(doc, dict) else {}), etag
        except ValueError:  # a damaged lease: as old as its heartbeat, none
            return {}, etag

    def _put(self, body: bytes, *, if_none_match: bool = False, if_match: str | None = None) -> bool:
        """A conditional put on S3; False if its condition failed (another driver got there first)."""
        etag = self.exp.put_if(LEASE_FILE, body, if_none_match=if_none_match, if_match=if_match)
        if etag is not None:
            self._etag = etag
        return etag is not None

    def _put_unconditional(self) -> bool:
        self.exp.write_bytes(LEASE_FILE, self.body())
        return True

    def _heartbeat(self) -> None:
        s3 = storage.scheme(self.exp.uri) == "s3"
        while not self._stop.wait(self.heartbeat_s):
            try:
                ok = self._put(self.body(), if_match=self._etag) if s3 else self._put_unconditional()
            except ExperimentError as e:  # the store is away for a moment: the next beat tries again
                print(f"vggbn: {self.exp.uri}: the lease's heartbeat failed ({e.what})", file=sys.stderr)
                continue
            if not ok:
                held, _ = self._read_doc()
                print(f"vggbn: {self.exp.uri}: the lease was taken over by {self._who(held or {})} after this "
                      f"driver was silent over {self.stale_s:.0f} s: two drivers may now run this experiment; "
                      f"stop one of them", file=sys.stderr)
                return

    # ------------------------------------------------------------------ giving it back
    def release(self) -> None:
        if self._beat is not None:
            self._stop.set()
            self._beat.join(timeout=30)
            self._beat = None
            with contextlib.suppress(ExperimentError, OSError):
                held, etag = self._read_doc()
                if held is not None and held.get("pid") == os.getpid() and held.get("host") == socket.gethostname():
                    self.exp.remove(LEASE_FILE)
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)  # the lock goes with the descriptor; the holder file stays as a record
            self._fd = None

    # ------------------------------------------------------------------ the refusal
    def _holder_local(self) -> dict:
        """Who holds a local lease, for the refusal ({} when its file cannot be read)."""
        try:
            return self._read_doc()[0] or {}
        except (OSError, ExperimentError):
            return {}

    @staticmethod
    def _who(held: dict) -> str:
        cmd = f"`vggbn {held['command']}`" if held.get("command") else "a driver"
        return f"{cmd} on {held.get('host', '?')} pid {held.get('pid', '?')}"

    def _held(self, held: dict, *, local: bool) -> ExperimentError:
        since = f" since {_when(float(held['since']))}" if held.get("since") else ""
        beat = ""
        if not local and held.get("heartbeat"):
            beat = f", its last heartbeat {time.time() - float(held['heartbeat']):.0f} s ago"
        after = ("the lease ends with that process (however it ends)" if local else
                 f"a driver silent for {self.stale_s:.0f} s loses the lease to the next one; if you know it "
                 f"is dead (its machine is gone), `vggbn {self.command} --take-over`")
        return ExperimentError(
            f"{self.exp.uri} is being run by {self._who(held)}{since}{beat}: one driver at a time "
            f"(vggbn {self.command} would run it too).",
            f"wait for it to end (`vggbn status {self.exp.uri}` says where it is), or stop that process; "
            f"{after}")
