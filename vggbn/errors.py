"""The one error type for people: `VggbnError(what, fix)` and the subclasses callers tell apart.

`vggbn`'s commands catch VggbnError alone and print it in one or two lines (what, where, how to
fix), exit code 2, no traceback unless --debug. Code reads `.what` and `.fix`, never the message
text. Some subclasses are ValueErrors too: pydantic turns a ValueError raised in a validator into
its ValidationError, which the spec loader words with the key path.
"""

from __future__ import annotations

MAX_ECHO = 240  # a value echoed in a message is cut here: a 10 MB line is not an error message


class VggbnError(Exception):
    """What went wrong (and where), and how to fix it. str(): `what`, then `Fix: fix` on a line."""

    def __init__(self, what: str, fix: str | None = None):
        self.what, self.fix = what, fix
        super().__init__(what if fix is None else f"{what}\nFix: {fix}")

    def inline(self) -> str:
        """What and fix on one line: for a message that quotes this one inside its own."""
        return self.what.rstrip(".") + (f"; {self.fix}" if self.fix else "")


class UsageError(VggbnError):
    """Bad input on the command line (a flag, a --set, a path)."""


class ConfigError(VggbnError, ValueError):
    """A trial configuration that cannot run: names the key, the value and what is allowed."""

    def __init__(self, what: str, fix: str | None = None, *, unknown_key: str | None = None):
        super().__init__(what, fix)
        self.unknown_key = unknown_key  # set when the problem is a key TrialConfig does not have


class SweepSpecError(VggbnError, ValueError):
    """A sweep file that cannot run: names the file, the key path and what is wrong."""


SpecError = SweepSpecError  # the short name inside vggbn; tracebacks keep the public name


class StorageError(VggbnError, ValueError):
    """A storage location (local path, file://, s3://, gs://) that cannot be used."""


class ExperimentError(SpecError):
    """An experiment directory that cannot be used as asked (missing, claimed, damaged)."""


class DataError(VggbnError, RuntimeError):
    """A dataset that cannot be found, read or fetched: says where vggbn looked."""


class ResultsError(VggbnError, ValueError):
    """Exported results that cannot be analysed: names the file."""


class StoredTrialError(VggbnError, ValueError):
    """An experiment with no one stored config for a trial to train again. `option` says why: "--trial"
    (no such trial there), or the option naming a PBT sweep ("--from", "base_from"), whose trials'
    values changed while they trained."""

    def __init__(self, what: str, fix: str | None = None, *, option: str | None = None):
        super().__init__(what, fix)
        self.option = option


class ClusterInitError(VggbnError):
    """Bad input to `vggbn cluster-init`, or an AWS refusal."""


def cut(value: object, limit: int = MAX_ECHO) -> str:
    """A value as echoed in a message: whitespace folded, at most `limit` characters."""
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
