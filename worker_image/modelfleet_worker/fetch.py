"""Model URIs -> local directories. `fetch` (an init container) and `serve` share
the same cache layout, so serve finds what fetch downloaded."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

log = logging.getLogger("modelfleet_worker.fetch")


class FetchError(Exception):
    pass


# Set by the operator from spec.model.credentials: the Secret's name, never a value.
CREDENTIALS_SECRET_ENV = "MODELFLEET_WORKER_CREDENTIALS_SECRET"


def _http_status(exc: BaseException) -> int | None:
    """The HTTP status behind a huggingface_hub error (requests: status_code) or a
    minio S3Error (urllib3: status), its cause chain included."""
    seen: BaseException | None = exc
    while seen is not None:
        response = getattr(seen, "response", None)
        status = getattr(response, "status_code", None)
        if status is None:
            status = getattr(response, "status", None)
        if isinstance(status, int):
            return status
        seen = seen.__cause__ or seen.__context__
    return None


def refused_message(uri: str, status: int, token_given: bool, secret: str) -> str:
    """What to fix when the Hub refuses a download (pure: tested by table)."""
    if token_given and secret:
        fix = (
            f"the token from Secret {secret!r} (spec.model.credentials, key tokenKey, "
            "default HF_TOKEN) was refused: put a valid Hub token with access to the "
            "model in that Secret"
        )
    elif token_given:
        fix = "the HF_TOKEN given was refused: set a valid Hub token with access to the model"
    else:
        fix = (
            "no Hub token was given: the model is gated or private; set "
            "spec.model.credentials.name to a Secret whose key HF_TOKEN holds a Hub token "
            "with access to it (and accept the model's terms on the Hub)"
        )
    return f"{uri}: the Hub answered {status}; {fix}"


def s3_refused_message(uri: str, status: int | None, keys_given: bool, secret: str) -> str:
    """What to fix when the object store refuses (or no keys were found)."""
    answered = f"the store answered {status}" if status else "no credentials were found"
    if keys_given and secret:
        fix = (
            f"the keys from Secret {secret!r} (spec.model.credentials: accessKeyIdKey, "
            "secretAccessKeyKey, endpointKey) were refused: check them and the endpoint"
        )
    elif keys_given:
        fix = "the AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY given were refused"
    else:
        fix = (
            "set spec.model.credentials.name to a Secret with AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO or R2)"
        )
    return f"{uri}: {answered}; {fix}"


@dataclass(frozen=True)
class ModelRef:
    scheme: str  # "file", "hf" or "s3"
    location: str  # path, repo id, or bucket/prefix
    revision: str | None


def parse_uri(uri: str, revision: str = "") -> ModelRef:
    if not uri:
        raise FetchError("no model given: set MODELFLEET_WORKER_MODEL or --model")
    if "://" not in uri:
        return ModelRef("file", uri, None)
    parsed = urlparse(uri)
    rest = unquote(parsed.netloc + parsed.path)
    if parsed.scheme == "file":
        return ModelRef("file", unquote(parsed.path) or "/", None)
    if parsed.scheme == "pvc":
        # The operator mounts the claim; the URI's path is relative to the mount.
        return ModelRef("file", "/models/" + rest.lstrip("/"), None)
    if parsed.scheme == "hf":
        repo, _, rev = rest.strip("/").partition("@")
        if repo.count("/") > 1 or not repo:
            raise FetchError(f"hf:// URI must be hf://org/name[@revision], got {uri!r}")
        return ModelRef("hf", repo, rev or revision or None)
    if parsed.scheme == "s3":
        if not parsed.netloc:
            raise FetchError(f"s3:// URI needs a bucket, got {uri!r}")
        return ModelRef("s3", rest.strip("/"), None)
    raise FetchError(f"unsupported model URI scheme {parsed.scheme!r} in {uri!r}")


def cache_path(ref: ModelRef, cache_dir: str) -> Path:
    if ref.scheme == "file":
        return Path(ref.location)
    safe = ref.location.replace("/", "--")
    if ref.scheme == "hf":
        return Path(cache_dir) / "hf" / safe / (ref.revision or "main")
    return Path(cache_dir) / "s3" / safe


def fetch(uri: str, cache_dir: str, revision: str = "") -> Path:
    """Make the model available locally and return its directory."""
    ref = parse_uri(uri, revision)
    dest = cache_path(ref, cache_dir)
    if ref.scheme == "file":
        if not dest.is_dir():
            raise FetchError(f"model directory {dest} does not exist")
        return dest
    if ref.scheme == "hf":
        return _fetch_hf(ref, dest)
    return _fetch_s3(ref, dest)


def _fetch_hf(ref: ModelRef, dest: Path) -> Path:
    from huggingface_hub import snapshot_download

    dest.mkdir(parents=True, exist_ok=True)
    log.info("fetching hf://%s@%s into %s", ref.location, ref.revision or "main", dest)
    # local_dir: plain files at a path we choose, so serve can find them offline.
    token = os.environ.get("HF_TOKEN") or None
    try:
        path = snapshot_download(
            repo_id=ref.location, revision=ref.revision, local_dir=str(dest), token=token
        )
    except Exception as exc:
        status = _http_status(exc)
        if status not in (401, 403):
            raise
        uri = f"hf://{ref.location}"
        secret = os.environ.get(CREDENTIALS_SECRET_ENV, "")
        # from None: the Hub's error text is not repeated (it may quote request headers).
        raise FetchError(refused_message(uri, status, token is not None, secret)) from None
    return Path(path)


def _fetch_s3(ref: ModelRef, dest: Path) -> Path:
    from . import fetch_s3

    return fetch_s3.fetch_s3(ref, dest)
