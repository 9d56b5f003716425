"""The official `openai` SDK against the OpenAI stand-in directly (the stand-in takes what
the real client sends, so its strictness is not stricter than the service) and against the
adapter (an OpenAI client reads the adapter's answers and errors as the service's)."""

from __future__ import annotations

import base64
import io
import uuid
from collections.abc import Iterator

import openai
import pytest

import hosted_fixtures
from modelfleet_dev.standins.common import in_thread, png, png_size
from modelfleet_dev.standins.openai_images import OpenAIImagesStandIn
from worker_fixtures import Worker

KEY = "sk-sdk-" + uuid.uuid4().hex


@pytest.fixture(scope="module")
def standin() -> Iterator[OpenAIImagesStandIn]:
    with in_thread(OpenAIImagesStandIn(KEY)) as s:
        assert isinstance(s, OpenAIImagesStandIn)
        yield s


@pytest.fixture(scope="module")
def adapter(standin: OpenAIImagesStandIn) -> Iterator[Worker]:
    w = hosted_fixtures.start_adapter("openai", "gpt-image-1", standin.base_url, KEY)
    yield w
    w.stop()


def _client(base_url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=30)


def test_sdk_generations_and_edits_pass_the_strict_stand_in(standin: OpenAIImagesStandIn) -> None:
    c = _client(standin.base_url)
    r = c.images.generate(model="dall-e-3", prompt="a fox", size="1792x1024", quality="hd",
                          style="natural", response_format="b64_json")  # fmt: skip
    assert png_size(base64.b64decode(r.data[0].b64_json or "")) == (1792, 1024)
    assert r.data[0].revised_prompt
    r = c.images.generate(model="gpt-image-1", prompt="a fox", n=2, size="1024x1536",
                          quality="low", background="opaque", output_format="png")  # fmt: skip
    assert len(r.data) == 2 and r.quality == "low"
    r = c.images.generate(model="dall-e-2", prompt="a fox", size="256x256")  # default: url
    assert r.data[0].url and r.data[0].url.startswith(standin.url)
    images = [("a.png", io.BytesIO(png(32, 32, i)), "image/png") for i in range(2)]
    r = c.images.edit(model="gpt-image-1", image=images, prompt="add a hat", size="1024x1024")
    assert len(r.data) == 1
    assert standin.calls_to("/images/edits")[-1].fields["files"] == {"image[]": 2}
    with pytest.raises(
        openai.BadRequestError
    ) as err:  # the service rejects it, so does the stand-in
        c.images.generate(model="dall-e-3", prompt="x", n=2)
    assert err.value.code == "invalid_value"
    with pytest.raises(openai.AuthenticationError):
        _client(standin.base_url, "sk-wrong").images.generate(model="dall-e-3", prompt="x")


def test_sdk_reads_the_adapter_as_the_service(
    adapter: Worker, standin: OpenAIImagesStandIn
) -> None:
    c = _client(adapter.url + "/v1", "unused-by-the-adapter")
    r = c.images.generate(
        model="gpt-image-1", prompt="a fox", n=3, size="1536x1024", quality="medium"
    )
    assert [png_size(base64.b64decode(d.b64_json or "")) for d in r.data] == [(1536, 1024)] * 3
    image = ("a.png", io.BytesIO(png(32, 32, 1)), "image/png")
    r = c.images.edit(model="gpt-image-1", image=image, prompt="add a hat")
    assert len(r.data) == 1 and r.data[0].b64_json
    with pytest.raises(openai.BadRequestError) as bad:
        c.images.generate(model="gpt-image-1", prompt="x", size="999x999")
    assert bad.value.param == "size"  # type: ignore[attr-defined]
    with pytest.raises(openai.UnprocessableEntityError) as refused:
        c.images.generate(model="gpt-image-1", prompt="forbidden-content")
    assert refused.value.code == "content_policy_violation"
    standin.add_fault("rate_limit", retry_after_s=5)
    with pytest.raises(openai.RateLimitError) as limited:
        c.images.generate(model="gpt-image-1", prompt="x")
    assert limited.value.code == "rate_limited"
    assert int(limited.value.response.headers["retry-after"]) >= 4
