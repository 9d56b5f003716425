"""The pure parts of the s3:// fetch (modelfleet_worker.fetch_s3): the client settings
from the environment, where each object lands (and which keys are refused), what to
download against the manifest, the manifest's round trip, and what a store's or the
network's error becomes. The wire itself: tests/integration/process/test_fetch_s3.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from minio.error import InvalidResponseError, S3Error, ServerError
from urllib3.exceptions import MaxRetryError, NewConnectionError
from urllib3.response import HTTPResponse

from modelfleet_worker.fetch import FetchError
from modelfleet_worker.fetch_s3 import (
    S3Settings,
    _failure,
    cached,
    manifest_path,
    object_path,
    read_manifest,
    s3_settings,
    to_download,
    write_manifest,
)

KEYS = {"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}


@pytest.mark.parametrize(
    ("env", "endpoint", "secure", "region", "keys"),
    [
        ({}, "s3.amazonaws.com", True, None, False),  # AWS, anonymous, region asked
        ({**KEYS, "AWS_REGION": "eu-west-1"}, "s3.amazonaws.com", True, "eu-west-1", True),
        ({"AWS_DEFAULT_REGION": "us-west-2"}, "s3.amazonaws.com", True, "us-west-2", False),
        ({"AWS_REGION": "eu-north-1", "AWS_DEFAULT_REGION": "x"}, "s3.amazonaws.com", True, "eu-north-1", False),
        ({**KEYS, "AWS_ENDPOINT_URL": "http://minio.data:9000"}, "minio.data:9000", False, None, True),
        ({"AWS_ENDPOINT_URL": "https://acct.r2.cloudflarestorage.com/", "AWS_REGION": "auto"},
         "acct.r2.cloudflarestorage.com", True, "auto", False),
        # The S3-specific variable wins, as in the AWS SDKs.
        ({"AWS_ENDPOINT_URL": "http://a:1", "AWS_ENDPOINT_URL_S3": "https://b:2"}, "b:2", True, None, False),
        ({"AWS_ENDPOINT_URL": "  ", **KEYS}, "s3.amazonaws.com", True, None, True),
        # A Secret key that exists but is empty counts as not given.
        ({"AWS_ACCESS_KEY_ID": "", "AWS_SECRET_ACCESS_KEY": ""}, "s3.amazonaws.com", True, None, False),
    ],
)  # fmt: skip
def test_s3_settings(
    env: dict[str, str], endpoint: str, secure: bool, region: str | None, keys: bool
) -> None:
    s = s3_settings(env)
    assert (s.endpoint, s.secure, s.region, s.keys_given) == (endpoint, secure, region, keys)
    if keys:
        assert (s.access_key, s.secret_key) == (
            KEYS["AWS_ACCESS_KEY_ID"],
            KEYS["AWS_SECRET_ACCESS_KEY"],
        )


def test_s3_settings_session_token_only_with_keys() -> None:
    assert s3_settings({**KEYS, "AWS_SESSION_TOKEN": "tok"}).session_token == "tok"
    assert s3_settings({"AWS_SESSION_TOKEN": "tok"}).session_token is None


def test_s3_settings_repr_hides_keys() -> None:
    s = s3_settings({**KEYS, "AWS_SESSION_TOKEN": "sess-tok"})
    text = repr(s) + str(s)
    assert "AKIDEXAMPLE" not in text and "wJalrXUtnFEMI" not in text and "sess-tok" not in text
    assert "s3.amazonaws.com" in text


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"AWS_ENDPOINT_URL": "minio:9000"}, "must be http:// or https://host[:port] with no path; it has no scheme"),
        ({"AWS_ENDPOINT_URL": "ftp://minio"}, "its scheme is 'ftp'"),
        ({"AWS_ENDPOINT_URL": "http://minio:9000/models"}, "path '/models'"),
        ({"AWS_ENDPOINT_URL_S3": "https://"}, "AWS_ENDPOINT_URL_S3 must be"),
        ({"AWS_ENDPOINT_URL": "https://u:pw@host"}, "it holds a user or password"),
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE"}, "AWS_ACCESS_KEY_ID is set but AWS_SECRET_ACCESS_KEY is empty"),
        ({"AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI"}, "AWS_SECRET_ACCESS_KEY is set but AWS_ACCESS_KEY_ID is empty"),
        ({"AWS_ACCESS_KEY_ID": "AKIDEXAMPLE", "MODELFLEET_WORKER_CREDENTIALS_SECRET": "r2"},
         "empty (from Secret 'r2')"),
    ],
)  # fmt: skip
def test_s3_settings_refuses(env: dict[str, str], says: str) -> None:
    with pytest.raises(FetchError) as err:
        s3_settings(env)
    assert says in str(err.value)
    for secret in ("AKIDEXAMPLE", "wJalrXUtnFEMI", "pw"):
        assert secret not in str(err.value).replace("password", "")


@pytest.mark.parametrize(
    ("prefix", "key", "rel"),
    [
        ("tiny/", "tiny/model_index.json", "model_index.json"),
        ("tiny/", "tiny/unet/config.json", "unet/config.json"),
        ("tiny/", "tiny/", None),  # the prefix's own folder marker
        ("tiny/", "tiny/unet/", None),  # a folder marker
        ("", "model_index.json", "model_index.json"),  # the bucket's root
        ("tiny/", "tiny/a b+c.txt", "a b+c.txt"),
        ("tiny/", "tiny/./unet/x", "unet/x"),
    ],
)
def test_object_path(prefix: str, key: str, rel: str | None) -> None:
    assert object_path(prefix, key) == rel


@pytest.mark.parametrize(
    ("prefix", "key", "says"),
    [
        ("tiny/", "tiny/../../etc/passwd", "escapes the cache"),
        ("tiny/", "tiny/unet/../../x", "escapes the cache"),
        ("tiny/", "tiny//etc/passwd", "escapes the cache"),  # would be an absolute path
        ("", "/etc/passwd", "escapes the cache"),
        ("tiny/", "tiny/..\\..\\x", "escapes the cache"),
        ("tiny/", "other/x", "not under 'tiny/'"),
    ],
)
def test_object_path_refuses(prefix: str, key: str, says: str) -> None:
    with pytest.raises(FetchError, match=says):
        object_path(prefix, key)


@pytest.mark.parametrize(
    ("listing", "recorded", "present", "wanted"),
    [
        ({"a": ("e1", 3)}, {}, {}, ["a"]),  # first fetch
        ({"a": ("e1", 3)}, {"a": ("e1", 3)}, {"a": 3}, []),  # all there
        ({"a": ("e2", 3)}, {"a": ("e1", 3)}, {"a": 3}, ["a"]),  # changed, same size
        ({"a": ("e1", 3)}, {"a": ("e1", 3)}, {}, ["a"]),  # file deleted
        ({"a": ("e1", 3)}, {"a": ("e1", 3)}, {"a": 2}, ["a"]),  # file truncated
        ({"a": ("e1", 3)}, {}, {"a": 3}, ["a"]),  # a file no manifest vouches for
        ({"b": ("e", 1), "a": ("e", 1)}, {"a": ("e", 1)}, {"a": 1}, ["b"]),
        ({"b": ("e", 1), "a": ("e", 1)}, {}, {}, ["a", "b"]),  # sorted
    ],
)
def test_to_download(
    listing: dict[str, tuple[str, int]],
    recorded: dict[str, tuple[str, int]],
    present: dict[str, int],
    wanted: list[str],
) -> None:
    assert to_download(listing, recorded, present) == wanted


def test_manifest_round_trip_and_cached(tmp_path: Path) -> None:
    dest = tmp_path / "s3" / "models--tiny"
    (dest / "unet").mkdir(parents=True)
    (dest / "model_index.json").write_bytes(b"{}")
    (dest / "unet" / "w.bin").write_bytes(b"1234")
    objects = {"model_index.json": ("e1", 2), "unet/w.bin": ("e2", 4)}
    uri = "s3://models/tiny"
    assert not cached(dest, uri)  # no manifest
    write_manifest(dest, uri, False, objects)
    assert read_manifest(dest, uri) == (False, objects)
    assert not cached(dest, uri)  # not complete
    write_manifest(dest, uri, True, objects)
    assert manifest_path(dest).parent == dest.parent / ".manifests"  # never in the model tree
    assert cached(dest, uri)
    assert not cached(dest, "s3://models--tiny") and read_manifest(dest, "s3://x") == (False, {})
    (dest / "unet" / "w.bin").write_bytes(b"12")
    assert not cached(dest, uri)  # a file of another size
    (dest / "unet" / "w.bin").unlink()
    assert not cached(dest, uri)
    manifest_path(dest).write_text("{not json")
    assert read_manifest(dest, uri) == (False, {})


def _s3_error(status: int, code: str) -> S3Error:
    return S3Error(HTTPResponse(status=status), code, "the store's words", "/models", "r1", "h1")


SETTINGS = S3Settings("127.0.0.1:9000", False, None, "AKIDEXAMPLE", "wJalrXUtnFEMI", None)
ANON = S3Settings("127.0.0.1:9000", False, None)
URI = "s3://models/tiny"


@pytest.mark.parametrize(
    ("settings", "secret", "exc", "says"),
    [
        (SETTINGS, "s3-keys", _s3_error(403, "SignatureDoesNotMatch"),
         "s3://models/tiny: the store answered 403; the keys from Secret 's3-keys'"),
        (SETTINGS, "s3-keys", _s3_error(403, "InvalidAccessKeyId"), "(S3 error InvalidAccessKeyId)"),
        (ANON, "", _s3_error(403, "AccessDenied"), "set spec.model.credentials.name to a Secret"),
        (ANON, "", InvalidResponseError(401, "text/html", "<html>proxy</html>"), "answered 401; set spec"),
        (SETTINGS, "", _s3_error(404, "NoSuchBucket"), "s3://models/tiny: the store has no such bucket"),
        (SETTINGS, "", _s3_error(404, "NoSuchKey"), "deleted between listing and download"),
        (SETTINGS, "", ServerError("boom", 503), "s3://models/tiny: the store answered 503"),
        (SETTINGS, "", MaxRetryError(None, "/models",  # type: ignore[arg-type]
                                     NewConnectionError(None, "Failed to establish a new connection: [Errno 111] Connection refused")),  # type: ignore[arg-type]
         "cannot reach the S3 endpoint 127.0.0.1:9000: [Errno 111] Connection refused"),
    ],
)  # fmt: skip
def test_failure(
    settings: S3Settings,
    secret: str,
    exc: Exception,
    says: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MODELFLEET_WORKER_CREDENTIALS_SECRET", secret)
    msg = _failure(URI, settings, exc)
    assert msg is not None and says in msg
    assert "the store's words" not in msg and "proxy" not in msg


def test_failure_leaves_other_errors_alone() -> None:
    assert _failure(URI, SETTINGS, ValueError("a bug")) is None
