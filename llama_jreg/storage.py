"""Object storage through fsspec: what any part of llama-jreg needs to read a URL (``s3://bucket/key``,
``gs://...``, any fsspec protocol) instead of a local path.

- :func:`is_url` tells a URL from a local path.
- :func:`filesystem` gives the fsspec file system of a URL and the path inside it. Endpoint and credentials
  come the standard way: ``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY`` (and the rest of
  the AWS environment / config files) for ``s3://``, or fsspec storage options from the config (e.g.
  ``data.storage_options={endpoint_url: http://minio:9000, key: ..., secret: ...}``), which win.
- :func:`expand` expands a URL glob into object URLs, :func:`object_id` gives an object's identity (its
  ETag / checksum where the store has one, else the sha256 of its bytes), :func:`fetch` a local copy of an
  object, cached by that identity (for readers that cannot stream a URL).
- :func:`storage_error` turns what a backend raises (unreachable endpoint, no credentials, no bucket, access
  denied, no backend installed) into one ``UserError`` line that names the URL and the fix.

The backends (s3fs, gcsfs, ...) are optional extras: ``pip install 'llama-jreg[s3]'``. Nothing here writes to
the store.
"""

from __future__ import annotations

import hashlib
import os
import re
import uuid
from pathlib import Path
from typing import Any

from llama_jreg import UserError

#: the extra (pyproject.toml) that installs each protocol's fsspec backend
EXTRAS = {"s3": ("s3", "s3fs"), "s3a": ("s3", "s3fs"), "gs": ("gcs", "gcsfs"), "gcs": ("gcs", "gcsfs")}
_URL = re.compile(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://")


def is_url(path: Any) -> bool:
    """True for ``scheme://...`` other than ``file://`` (a local path)."""
    m = _URL.match(str(path))
    return m is not None and m.group(1).lower() != "file"


def protocol(url: str) -> str:
    m = _URL.match(url)
    return m.group(1).lower() if m else "file"


def filesystem(url: str, options: dict[str, Any] | None = None):
    """``(fs, path)``: the fsspec file system for ``url`` (with ``options``) and the path of ``url`` in it.
    A UserError (naming the URL and the package to install) when no backend is installed for its protocol."""
    import fsspec  # deferred: fsspec backends import their cloud SDKs (s3fs: aiobotocore)

    try:
        return fsspec.core.url_to_fs(url, **dict(options or {}))
    except (ImportError, ValueError) as e:
        raise storage_error(url, e) from None


def expand(pattern: str, options: dict[str, Any] | None = None) -> list[str]:
    """The object URLs a URL (or URL glob, ``*`` / ``**``) names, sorted; [] when none. Raises UserError when
    the store cannot be reached or read (see :func:`storage_error`)."""
    fs, path = filesystem(pattern, options)
    scheme = protocol(pattern)
    try:
        fs.invalidate_cache()  # listings cached by an earlier call in this process may be stale
        if any(c in path for c in "*?["):
            hits = sorted(fs.glob(path))
        else:
            hits = [path] if fs.exists(path) else []
        hits = [h for h in hits if fs.isfile(h)]
        if not hits:
            bucket = path.split("/", 1)[0]
            if not fs.exists(bucket):
                raise FileNotFoundError(f"bucket {bucket} does not exist")
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - each backend raises its own types; classified in storage_error
        raise storage_error(pattern, e) from None
    return [f"{scheme}://{h}" for h in hits]


def object_id(url: str, options: dict[str, Any] | None = None) -> str:
    """What an object *is*: ``etag:<ETag>`` (S3 and S3-compatible stores), ``md5:``/``crc32c:`` (GCS), else
    ``sha256:`` of its bytes (read once)."""
    fs, path = filesystem(url, options)
    try:
        fs.invalidate_cache(path)  # what the store holds now, not a listing cached earlier in this process
        info = fs.info(path)
        for key, name in (("ETag", "etag"), ("etag", "etag"), ("md5Hash", "md5"), ("crc32c", "crc32c")):
            if info.get(key):
                return f"{name}:{str(info[key]).strip(chr(34))}"
        h = hashlib.sha256()
        with fs.open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
        return f"sha256:{h.hexdigest()}"
    except Exception as e:  # noqa: BLE001 - classified in storage_error
        raise storage_error(url, e) from None


def fetch(url: str, cache: Path, options: dict[str, Any] | None = None) -> Path:
    """A local copy of the object ``url``, kept under ``cache/objects/`` by the object's identity (so a changed
    object is fetched again, an unchanged one once). Written to a temporary name, then renamed."""
    key = hashlib.sha256(f"{url}\n{object_id(url, options)}".encode()).hexdigest()[:24]
    dest = Path(cache) / "objects" / key / url.rsplit("/", 1)[-1]
    if dest.is_file():
        return dest
    fs, path = filesystem(url, options)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        fs.get_file(path, str(tmp))
        os.replace(tmp, dest)
    except Exception as e:  # noqa: BLE001 - classified in storage_error
        tmp.unlink(missing_ok=True)
        raise storage_error(url, e) from None
    return dest


def _chain(e: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    while e is not None and e not in out:
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def storage_error(url: str, e: BaseException, action: str = "read from") -> UserError:
    """One line for what went wrong reading ``url`` (``action``: "write to" for an upload): the cause and the
    fix."""
    chain = _chain(e)
    names = " ".join(type(x).__name__ for x in chain)
    text = " ".join(str(x) for x in chain)
    scheme = protocol(url)
    if isinstance(e, ImportError) or "Install " in text or "Protocol not known" in text:
        extra, package = EXTRAS.get(scheme, (None, None))
        fix = (f"pip install 'llama-jreg[{extra}]' (or {package})" if extra else
               f"install the fsspec backend for {scheme}:// (see fsspec's list of known implementations)")
        return UserError(f"{url}: no fsspec backend for {scheme}:// is installed; {fix}")
    if "NoCredentials" in names or "Unable to locate credentials" in text or "PartialCredentials" in names:
        return UserError(f"{url}: no credentials for the object store; set AWS_ACCESS_KEY_ID and "
                         "AWS_SECRET_ACCESS_KEY (or data.storage_options key and secret)")
    if ("EndpointConnectionError" in names or "ConnectTimeout" in names or "Could not connect" in text
            or "ClientConnectorError" in names or "ConnectionRefused" in names):
        return UserError(f"{url}: cannot reach the object store endpoint ({_first_line(chain[-1])}); check "
                         "AWS_ENDPOINT_URL (or data.storage_options.endpoint_url) and the network")
    if "NoSuchBucket" in text or "bucket" in text.lower() and ("does not exist" in text or "not exist" in text):
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        return UserError(f"{url}: bucket {bucket} does not exist (or is not visible with these credentials); "
                         "check the URL, the endpoint and the account")
    if isinstance(e, PermissionError) or "AccessDenied" in text or "InvalidAccessKeyId" in text \
            or "SignatureDoesNotMatch" in text or "Forbidden" in text:
        return UserError(f"{url}: access denied ({_first_line(chain[-1])}); check the credentials "
                         "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) and the bucket's permissions")
    if isinstance(e, FileNotFoundError):
        return UserError(f"{url}: no such object; check the URL (globs like s3://bucket/corpus/*.jsonl work)")
    return UserError(f"{url}: cannot {action} the object store: {type(chain[-1]).__name__}: "
                     f"{_first_line(chain[-1])}")


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0][:200] if lines else type(e).__name__
