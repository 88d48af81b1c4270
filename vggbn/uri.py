"""Where experiments live: a local directory, `file://`, `s3://` or `gs://`; its pyarrow filesystem
(the one Ray uses too) and errors about it for people. The sweep layer and analysis/ both use
this module; it imports neither of them, nor Ray.

An object-storage URI may end in a query of pyarrow's options, e.g.
`s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http` for MinIO, Ceph or R2: paths are
joined before the query, which stays at the end. Without one, the usual AWS settings apply
(`AWS_ENDPOINT_URL`, `AWS_PROFILE`, `AWS_ACCESS_KEY_ID`, an instance profile).
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from vggbn.errors import StorageError

SCHEMES = ("s3", "gs", "gcs", "file")


def scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def is_remote(uri: str) -> bool:
    """Object storage (s3://, gs://), as opposed to a local path or file://."""
    return scheme(str(uri)) not in ("", "file")


def split_query(uri: str) -> tuple[str, str]:
    """'s3://b/p?endpoint_override=h:9' -> ('s3://b/p', 'endpoint_override=h:9'); local paths keep '?'."""
    uri = str(uri)
    if "://" not in uri or "?" not in uri:
        return uri, ""
    base, query = uri.split("?", 1)
    return base, query


def _with_query(base: str, query: str) -> str:
    return f"{base}?{query}" if query else base


def join(uri: str, *parts: str) -> str:
    """uri/part/... with the query kept at the end."""
    base, query = split_query(uri)
    return _with_query("/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]), query)


def parent_and_name(uri: str) -> tuple[str, str]:
    """'s3://b/p/name?q' -> ('s3://b/p?q', 'name'); '/a/b' -> ('/a', 'b')."""
    base, query = split_query(uri)
    parent, _, name = base.rstrip("/").rpartition("/")
    return _with_query(parent, query), name


def name(uri: str) -> str:
    return parent_and_name(uri)[1]


# a local path that starts like a URI of a known kind is a typo of one, not a directory named "s3:"
_SCHEME_LIKE = re.compile(r"^(?P<kind>[A-Za-z][A-Za-z0-9+.-]*):(?P<slashes>/*)(?P<rest>.*)$", re.S)


def problem(uri: str) -> str | None:
    """What is wrong with a storage location's form (a local path, file://, s3://, gs://), or None.
    Looks at the string only (no network)."""
    if "://" not in uri:
        m = _SCHEME_LIKE.match(uri)
        if m and m["kind"].lower() in SCHEMES:
            kind, rest = m["kind"].lower(), m["rest"]
            meant = f"file:///{rest.lstrip('/')}" if kind == "file" else f"{kind}://{rest.lstrip('/') or 'BUCKET/PATH'}"
            return f"not a URI ({kind}: needs two slashes) and not a local directory either: did you mean {meant}?"
        return None
    base, _ = split_query(uri)
    kind, rest = base.split("://", 1)
    if kind.lower() not in SCHEMES:
        return (f"scheme {kind}:// is not supported; use a local directory, file:///PATH, "
                f"s3://BUCKET/PATH or gs://BUCKET/PATH")
    if kind.lower() == "file":
        host = rest.split("/", 1)[0]
        if not rest.strip("/"):
            return f"no path in the URI; write {kind}:///PATH"
        if host and host != "localhost":
            return (f"{kind}://{host}/... names the host {host!r}, not a directory (a file URI's path starts "
                    f"after three slashes): write {kind}:///ABSOLUTE/PATH, or {rest} for a relative directory")
        return None
    bucket, _, key = rest.partition("/")
    if not bucket.rpartition("@")[2]:
        return f"no bucket in the URI; write {kind}://BUCKET/PATH"
    if any(part in (".", "..") for part in key.split("/")):
        return (f"'.' and '..' in an object key are not directories in a bucket (they would name another "
                f"key, or none); write the key in full, e.g. {kind}://{bucket}/PATH")
    return None


def normalize(path: str) -> str:
    """A local path -> absolute path; file:// -> its local path; s3:// and gs:// stay URIs (a
    trailing / dropped, the query kept). StorageError for a form vggbn cannot open."""
    path = str(path)
    if "://" not in path:
        return str(Path(path).expanduser().absolute())
    why = problem(path)
    if why:
        raise StorageError(f"{path}: {why}.", "give the sweep's directory as a local path or a "
                           "URI of one of these kinds")
    if scheme(path) == "file":
        return str(Path(urlparse(path).path).absolute())
    base, query = split_query(path)
    return _with_query(base.rstrip("/"), query)


def filesystem(uri: str):
    """(pyarrow filesystem, path on it) of a normalized location. StorageError, said for people,
    when pyarrow refuses the URI (an unknown query option, no credentials for gs://, ...)."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
    except (OSError, ValueError) as e:  # pyarrow.ArrowInvalid is a ValueError
        raise StorageError(*explain(uri, e)) from None
    return fs, path.rstrip("/") or path


def endpoint(uri: str) -> str | None:
    """The S3-compatible endpoint a URI uses: its endpoint_override, else AWS_ENDPOINT_URL(_S3)."""
    q = parse_qs(split_query(uri)[1])
    if q.get("endpoint_override"):
        host = q["endpoint_override"][0]
        return host if "://" in host else f"{q.get('scheme', ['https'])[0]}://{host}"
    if scheme(uri) == "s3":
        return os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL") or None
    return None


def bucket_and_key(uri: str) -> tuple[str, str]:
    """'s3://b/p/x?q' -> ('b', 'p/x')."""
    u = urlparse(split_query(uri)[0])
    return u.netloc.rpartition("@")[2], u.path.strip("/")


def s3_client(uri: str):
    """A boto3 S3 client for what the URI names: its endpoint (query or AWS_ENDPOINT_URL), region
    and credentials (in the URI or boto3's usual chain)."""
    import boto3

    q = parse_qs(split_query(uri)[1])
    u = urlparse(split_query(uri)[0])
    kw = {"endpoint_url": endpoint(uri)} if endpoint(uri) else {}
    if q.get("region"):
        kw["region_name"] = q["region"][0]
    if u.username and u.password:
        kw.update({"aws_access_key_id": u.username, "aws_secret_access_key": u.password})
    # a session of its own: boto3's default one keeps the credentials it first found (a process
    # that ran under others, a notebook whose environment changed since, would use those)
    return boto3.session.Session().client("s3", **kw)


def where(uri: str) -> str:
    """The store behind a URI in words: 'the S3 endpoint http://127.0.0.1:9000', 'AWS S3', ..."""
    if scheme(uri) == "s3":
        ep = endpoint(uri)
        return f"the S3 endpoint {ep}" if ep else "AWS S3"
    return {"gs": "Google Cloud Storage", "gcs": "Google Cloud Storage"}.get(scheme(uri), "the local disk")


_UNREACHABLE = ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect", "resolve host",
                "Connection refused", "EndpointConnectionError", "Could not connect to the endpoint",
                "Connect timeout", "timed out")
_NO_BUCKET = ("NO_SUCH_BUCKET", "NoSuchBucket", "bucket does not exist", "specified bucket does not exist")
_DENIED = ("ACCESS_DENIED", "AccessDenied", "Access Denied", "INVALID_ACCESS_KEY_ID", "InvalidAccessKeyId",
           "SIGNATURE_DOES_NOT_MATCH", "SignatureDoesNotMatch", "EXPIRED_TOKEN", "ExpiredToken",
           "MISSING_AUTHENTICATION", "InvalidClientTokenId", "UNRECOGNIZED_CLIENT", "Forbidden",
           "HTTP response code: 403", "credentials", "Permission denied", "PERMISSION_DENIED")


def explain(uri: str, e: BaseException, doing: str = "cannot be read") -> tuple[str, str]:
    """An error from pyarrow or boto3 about `uri`, as (what happened, the fix)."""
    text = " ".join(f"{type(e).__name__}: {e}".split())
    detail = text[:240] + ("..." if len(text) > 240 else "")
    bucket = bucket_and_key(uri)[0] if is_remote(uri) else ""
    if "query parameter" in text:
        return (f"{uri}: {detail}.", "the query takes pyarrow's options for this store, e.g. "
                "?endpoint_override=HOST:PORT&scheme=http&region=REGION")
    if any(s in text for s in _NO_BUCKET) or ("resolving region" in text and "NOT_FOUND" in text):
        return (f"{uri}: no bucket {bucket} at {where(uri)}.", "check the bucket's name and the "
                "endpoint (AWS_ENDPOINT_URL or ?endpoint_override=), or create the bucket")
    if any(s in text for s in _UNREACHABLE):
        return (f"{uri}: cannot reach {where(uri)} ({detail}).", "check the endpoint "
                "(AWS_ENDPOINT_URL, or ?endpoint_override=HOST:PORT&scheme=http in the URI) and "
                "that the store is up")
    if any(s in text for s in ("Unable to locate credentials", "NoCredentialsError", "No credentials")):
        return (f"{uri}: no credentials found for {where(uri)} ({detail}).", "set AWS_PROFILE, or "
                "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or run where an instance profile gives them")
    if any(s in text for s in _DENIED):
        return (f"{uri}: access denied by {where(uri)} ({detail}).", f"give credentials that may "
                f"read and write {'the bucket ' + bucket if bucket else 'it'} (AWS_PROFILE, "
                f"AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY, or the node's instance profile)")
    if not is_remote(uri) and isinstance(e, OSError):  # a local directory: the fix is about the disk
        return f"{uri}: {doing} ({e.strerror or detail}).", local_fix(e.errno)
    return f"{uri}: {doing} ({detail}).", "check the URI and the credentials for it"


_LOCAL_FIX = {
    errno.ENOTDIR: "a file is where a directory should be on that path: give a directory, e.g. storage=results",
    errno.EROFS: "that filesystem is read-only: remount it read-write, or copy the experiment to a writable "
                 "disk (for a new sweep: storage= a directory there)",
    errno.EACCES: "you may not write there: give a directory of yours, e.g. storage=results",
    errno.EPERM: "you may not write there: give a directory of yours, e.g. storage=results",
    errno.ENOSPC: "free space there, or give a directory on a disk with space",
    errno.EDQUOT: "free space in your disk quota",
}


def local_fix(code: int | None) -> str:
    """What to do about an OSError of this errno on a local directory."""
    return _LOCAL_FIX.get(code, "give a directory on a disk you can write, e.g. storage=results")


def missing(fs, uri: str, path: str) -> tuple[str, str | None]:
    """Why nothing is at `path` of an object store: (what, a fix or None). No bucket, or nothing at
    that prefix (the caller knows the fix for that)."""
    import pyarrow.fs as pafs

    bucket = path.split("/", 1)[0]
    try:
        gone = fs.get_file_info(bucket).type == pafs.FileType.NotFound
    except OSError:
        gone = False
    if gone:
        return (f"no bucket {bucket} at {where(uri)}", "check the bucket's name and the endpoint "
                "(AWS_ENDPOINT_URL, or ?endpoint_override=HOST:PORT&scheme=http in the URI)")
    return "nothing at this path (no such prefix)", None
