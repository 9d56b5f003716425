"""s3:// models through the `minio` client: AWS S3, MinIO, R2 and any other store
that speaks the S3 API with Signature V4.

Settings come from the environment the operator gives the fetch step (secretKeyRef
env from spec.model.credentials): AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (both,
or neither for anonymous reads), AWS_SESSION_TOKEN (optional), AWS_ENDPOINT_URL_S3
or AWS_ENDPOINT_URL (default AWS), AWS_REGION or AWS_DEFAULT_REGION (default: asked
of the store, or us-east-1 when anonymous).

Every object under the prefix lands at the same relative path below the cache
directory, written to a temporary file and renamed when its size is right. A
manifest beside the cache (`.manifests/<dir>.json`: each object's ETag and size)
records progress; once it says complete, and every file is there at its size,
`fetch` returns the directory without the network (serve, after the init step). An
interrupted fetch resumes: objects whose ETag, size and file still match are kept.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlparse

from .fetch import CREDENTIALS_SECRET_ENV, FetchError, ModelRef, s3_refused_message

log = logging.getLogger("modelfleet_worker.fetch")

AWS_HOST = "s3.amazonaws.com"
CHUNK = 1 << 20


@dataclass(frozen=True)
class S3Settings:
    endpoint: str  # host[:port], as minio takes it
    secure: bool
    region: str | None
    access_key: str | None = field(default=None, repr=False)  # never in a repr or log
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)

    @property
    def keys_given(self) -> bool:
        return self.access_key is not None


def s3_settings(env: Mapping[str, str]) -> S3Settings:
    """The client's settings from the environment (pure: tested by table). Errors
    name the variable and the rule, never a key's value."""
    secret = env.get(CREDENTIALS_SECRET_ENV, "")
    where = f" (from Secret {secret!r})" if secret else ""
    name = (
        "AWS_ENDPOINT_URL_S3" if env.get("AWS_ENDPOINT_URL_S3", "").strip() else "AWS_ENDPOINT_URL"
    )
    raw = env.get(name, "").strip()
    if raw:
        url = urlparse(raw)
        rule = f"{name}{where} must be http:// or https://host[:port] with no path"
        if "://" not in raw:
            raise FetchError(f"{rule}; it has no scheme")
        if url.scheme not in ("http", "https"):
            raise FetchError(f"{rule}; its scheme is {url.scheme!r}")
        if url.username is not None or url.password is not None:
            raise FetchError(
                f"{rule}; it holds a user or password: put keys in the Secret's key fields"
            )
        if not url.hostname or url.path not in ("", "/") or url.query or url.fragment:
            raise FetchError(f"{rule}; got host {url.hostname or ''!r} and path {url.path!r}")
        endpoint, secure = url.netloc, url.scheme == "https"
    else:
        endpoint, secure = AWS_HOST, True
    access = env.get("AWS_ACCESS_KEY_ID", "").strip() or None
    secret_key = env.get("AWS_SECRET_ACCESS_KEY", "").strip() or None
    if (access is None) != (secret_key is None):
        have, lack = (
            ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
            if access
            else ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID")
        )
        raise FetchError(
            f"{have} is set but {lack} is empty{where}: give both keys, or neither for "
            "anonymous reads"
        )
    region = (env.get("AWS_REGION", "") or env.get("AWS_DEFAULT_REGION", "")).strip() or None
    token = env.get("AWS_SESSION_TOKEN", "").strip() or None
    return S3Settings(endpoint, secure, region, access, secret_key, token if access else None)


def object_path(prefix: str, key: str) -> str | None:
    """Where object `key` lands below the model directory, relative (pure). None for
    the prefix itself and folder markers; FetchError for a key that would leave it."""
    if not key.startswith(prefix):
        raise FetchError(f"the store listed {key!r}, which is not under {prefix!r}")
    rel = key[len(prefix) :]
    if not rel or rel.endswith("/"):
        return None
    parts = PurePosixPath(rel).parts
    if rel.startswith("/") or ".." in parts or "\\" in rel or "\0" in rel:
        raise FetchError(f"refusing s3 key that escapes the cache: {key!r}")
    return PurePosixPath(*parts).as_posix()


# One object as the store lists it: (etag, size).
Listed = tuple[str, int]


def to_download(
    listing: Mapping[str, Listed], recorded: Mapping[str, Listed], present: Mapping[str, int]
) -> list[str]:
    """The objects to (re)download (pure): new or changed since the manifest, or whose
    file is missing or of another size. Sorted, so progress reads the same each run."""
    return sorted(
        rel
        for rel, (etag, size) in listing.items()
        if recorded.get(rel) != (etag, size) or present.get(rel) != size
    )


def manifest_path(dest: Path) -> Path:
    # Beside the model directory, never in it: the tree stays what the bucket holds.
    # Bucket names cannot start with ".", so no model directory is called .manifests.
    return dest.parent / ".manifests" / f"{dest.name}.json"


def read_manifest(dest: Path, uri: str) -> tuple[bool, dict[str, Listed]]:
    """(complete, objects) of `uri`'s earlier fetch; nothing for another URI's (two
    URIs can share a directory name: `a/b--c` and `a--b/c`)."""
    try:
        data = json.loads(manifest_path(dest).read_text())
        if data["uri"] != uri:
            return False, {}
        objects = {str(k): (str(v[0]), int(v[1])) for k, v in data["objects"].items()}
        return bool(data["complete"]), objects
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return False, {}


def write_manifest(dest: Path, uri: str, complete: bool, objects: Mapping[str, Listed]) -> None:
    path = manifest_path(dest)
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {"uri": uri, "complete": complete, "objects": {k: list(v) for k, v in objects.items()}}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(body, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _sizes(dest: Path, rels: list[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for rel in rels:
        path = dest / rel
        if path.is_file():
            sizes[rel] = path.stat().st_size
    return sizes


def cached(dest: Path, uri: str) -> bool:
    """A complete earlier fetch of `uri`, every file still there at its size."""
    complete, recorded = read_manifest(dest, uri)
    if not complete or not recorded:
        return False
    sizes = _sizes(dest, list(recorded))
    return all(sizes.get(rel) == size for rel, (_, size) in recorded.items())


def _client(settings: S3Settings) -> Any:
    try:
        from minio import Minio
    except ImportError as exc:  # the worker extra installs it
        raise FetchError(
            "s3:// models need the `minio` package, which is not installed here; "
            "`pip install minio` (the worker image has it) or use hf:// / file://"
        ) from exc
    return Minio(
        settings.endpoint,
        access_key=settings.access_key,
        secret_key=settings.secret_key,
        session_token=settings.session_token,
        secure=settings.secure,
        region=settings.region,
    )


def fetch_s3(ref: ModelRef, dest: Path) -> Path:
    uri = f"s3://{ref.location}"
    if cached(dest, uri):
        log.info("%s: complete in %s (manifest %s)", uri, dest, manifest_path(dest))
        return dest
    settings = s3_settings(os.environ)
    bucket, _, prefix = ref.location.partition("/")
    prefix = prefix.rstrip("/") + "/" if prefix else ""
    log.info("fetching %s from %s into %s", uri, settings.endpoint, dest)
    try:
        return _download(_client(settings), uri, bucket, prefix, dest)
    except FetchError:
        raise
    except Exception as exc:
        message = _failure(uri, settings, exc)
        if message is None:
            raise
        raise FetchError(message) from None


def _failure(uri: str, settings: S3Settings, exc: Exception) -> str | None:
    """What a store's or the network's error means, in our words: the store's own
    text is not repeated (it may quote request details)."""
    from minio.error import InvalidResponseError, S3Error, ServerError
    from urllib3.exceptions import HTTPError

    status: int | None = None
    code = ""
    if isinstance(exc, S3Error):
        status, code = exc.response.status, exc.code or ""
    elif isinstance(exc, ServerError):
        status = exc.status_code
    elif isinstance(exc, InvalidResponseError):
        status = getattr(exc, "_code", None)
    elif isinstance(exc, HTTPError):
        reason = getattr(exc, "reason", None) or exc
        said = str(reason).rsplit(": ", 1)[-1]  # "[Errno 111] Connection refused"
        return f"{uri}: cannot reach the S3 endpoint {settings.endpoint}: {said}"
    else:
        return None
    if status in (401, 403):
        secret = os.environ.get(CREDENTIALS_SECRET_ENV, "")
        return s3_refused_message(uri, status, settings.keys_given, secret) + (
            f" (S3 error {code})" if code else ""
        )
    if code == "NoSuchBucket":
        return f"{uri}: the store has no such bucket (404 NoSuchBucket)"
    if code == "NoSuchKey":
        return f"{uri}: an object was deleted between listing and download (404 NoSuchKey); fetch again"
    return f"{uri}: the store answered {status}" + (f" {code}" if code else "")


def _download(client: Any, uri: str, bucket: str, prefix: str, dest: Path) -> Path:
    listing: dict[str, Listed] = {}
    keys: dict[str, str] = {}
    for obj in client.list_objects(bucket, prefix=prefix, recursive=True):
        rel = object_path(prefix, obj.object_name)
        if rel is None:
            continue
        listing[rel] = (str(obj.etag or ""), int(obj.size or 0))
        keys[rel] = obj.object_name
    if not listing:
        raise FetchError(f"no objects under {uri}")
    _, recorded = read_manifest(dest, uri)
    wanted = to_download(listing, recorded, _sizes(dest, list(listing)))
    # Files an earlier fetch wrote that the store no longer has (recorded ones only).
    for rel in recorded.keys() - listing.keys():
        (dest / rel).unlink(missing_ok=True)
    kept = {rel: v for rel, v in listing.items() if rel not in wanted}
    write_manifest(dest, uri, False, kept)
    for n, rel in enumerate(wanted, 1):
        etag, size = listing[rel]
        _get(client, bucket, keys[rel], dest / rel, size, uri)
        kept[rel] = (etag, size)
        write_manifest(dest, uri, False, kept)
        log.info("%s: %d/%d %s (%d bytes)", uri, n, len(wanted), rel, size)
    write_manifest(dest, uri, True, kept)
    log.info("%s: %d objects, %d downloaded, in %s", uri, len(listing), len(wanted), dest)
    return dest


def _get(client: Any, bucket: str, key: str, target: Path, size: int, uri: str) -> None:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise FetchError(
            f"{uri}: {key!r} cannot be written: the store has an object named like its folder"
        ) from None
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    try:
        got = 0
        with os.fdopen(fd, "wb") as out:
            response = client.get_object(bucket, key)
            try:
                for chunk in response.stream(CHUNK):
                    out.write(chunk)
                    got += len(chunk)
            finally:
                response.close()
                response.release_conn()
        if got != size:
            raise FetchError(f"{uri}: {key!r} arrived with {got} bytes, the listing said {size}")
        os.replace(tmp, target)
    finally:
        Path(tmp).unlink(missing_ok=True)
