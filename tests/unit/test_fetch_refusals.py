"""What `fetch` says when a store refuses: the S3 message per case, and the HTTP
status found behind huggingface_hub errors (response.status_code, through the
cause chain) and minio's S3Error (a urllib3 response: status)."""

from __future__ import annotations

from typing import Any

import pytest

from modelfleet_worker.fetch import _http_status, s3_refused_message


@pytest.mark.parametrize(
    ("status", "keys", "secret", "says"),
    [
        (None, False, "", "no credentials were found; set spec.model.credentials.name"),
        (403, False, "", "the store answered 403; set spec.model.credentials.name"),
        (403, True, "r2-keys", "the keys from Secret 'r2-keys'"),
        (403, True, "", "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY given were refused"),
    ],
)
def test_s3_refused_message(status: int | None, keys: bool, secret: str, says: str) -> None:
    msg = s3_refused_message("s3://models/sdxl", status, keys, secret)
    assert msg.startswith("s3://models/sdxl: ") and says in msg


class _Resp:
    def __init__(self, status: int) -> None:
        self.status_code = status


class _Urllib3Resp:
    def __init__(self, status: int) -> None:
        self.status = status


class _HttpError(Exception):
    def __init__(self, response: Any) -> None:
        super().__init__("refused")
        self.response = response


def _chained(inner: BaseException) -> BaseException:
    try:
        try:
            raise inner
        except BaseException as exc:
            raise RuntimeError("cannot find the requested files in the local cache") from exc
    except RuntimeError as outer:
        return outer


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (_HttpError(_Resp(401)), 401),
        (_chained(_HttpError(_Resp(403))), 403),  # snapshot_download's local-cache wrapper
        (_HttpError(_Urllib3Resp(403)), 403),  # minio's S3Error.response
        (ValueError("no response"), None),
        (_HttpError(None), None),
    ],
)
def test_http_status(exc: BaseException, status: int | None) -> None:
    assert _http_status(exc) == status
