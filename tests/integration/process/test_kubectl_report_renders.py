"""The report's side-by-side renders from real text-drawing workers and their real OCR:
the HTML holds both images of the same prompt and seed, and what each was read as."""

from __future__ import annotations

import base64
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from modelfleet.canary.replay import parse_golden
from modelfleet.kubectl import report
from modelfleet.kubectl.renders import (
    ReportPrompt,
    Target,
    golden_report_prompts,
    pairs_from,
    pairs_from_workers,
)
from modelfleet.kubectl.report_pairs import text_verdict
from modelfleet_dev.routerproc import RouterProcess, policy, write_config
from worker_fixtures import Worker, running_text_workers

pytestmark = pytest.mark.timeout(180)

PLAIN = "HAPPY MARKET"  # no letters the corruption could swap for a look-alike (O/0, I/1)


TOKEN = "report-test-operator-token-51c0"


@pytest.fixture(scope="module")
def pools(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Worker, Worker]]:
    tmp = tmp_path_factory.mktemp("report")
    with running_text_workers(tmp, {"clean": 0.0, "bad": 1.0}) as ws:
        yield ws["clean"], ws["bad"]


def test_report_shows_both_renders_and_what_each_was_read_as(
    pools: tuple[Worker, Worker], tmp_path: Path
) -> None:
    stable, candidate = pools
    prompts = [ReportPrompt(f'a shop banner with the text "{PLAIN}"', 5), ReportPrompt("a cat", 6)]
    pairs = pairs_from_workers(
        ("clean", stable.url), ("bad", candidate.url), prompts, size="512x256", steps=None
    )
    assert [(p.prompt, p.seed) for p in pairs] == [(q.prompt, q.seed) for q in prompts]
    text_pair, plain_pair = pairs

    s, c = text_verdict(text_pair.stable), text_verdict(text_pair.candidate)
    assert (s.status, s.read, s.word_accuracy, s.passed) == ("passed", PLAIN, 1.0, True)
    assert c.status == "failed" and c.passed is False
    assert c.read is not None and c.read != PLAIN
    assert c.word_accuracy == 0.5  # one of the two words mangled
    for r in (text_pair.stable, text_pair.candidate):
        assert r.image is not None
        assert Image.open(io.BytesIO(r.image)).size == (512, 256)
    # A prompt without expected text is rendered but not verified.
    assert text_verdict(plain_pair.stable).status == "not verified"

    canary = {
        "metadata": {"name": "typo", "namespace": "ns"},
        "spec": {"stablePool": "clean", "candidatePool": "bad", "steps": [50, 100]},
        "status": {"phase": "RolledBack"},
    }
    page = report.render_report(canary, pairs=pairs, generated_at="T")
    (tmp_path / "report.html").write_text(page)
    uris = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    images = [base64.b64decode(u) for u in uris]
    assert images == [
        text_pair.stable.image,
        text_pair.candidate.image,
        plain_pair.stable.image,
        plain_pair.candidate.image,
    ]
    assert f'read: <q class="read">{PLAIN}</q>' in page
    assert f'read: <q class="read">{c.read}</q>' in page
    assert "passed: yes" in page and "passed: no" in page
    assert "word accuracy 0.5" in page


@pytest.fixture(scope="module")
def pin_router(
    tmp_path_factory: pytest.TempPathFactory, pools: tuple[Worker, Worker]
) -> Iterator[RouterProcess]:
    tmp = tmp_path_factory.mktemp("report-router")
    (tmp / "token").write_text(TOKEN + "\n")
    # The route sends everything to `clean`: only a pin reaches `bad`.
    cfg = write_config(
        tmp / "router.yaml",
        [policy([{"name": "all", "pool": "clean"}])],
        {"clean": [pools[0].url], "bad": [pools[1].url]},
    )
    r = RouterProcess(cfg, ["--operator-token-file", str(tmp / "token")])
    try:
        yield r.start()
    finally:
        r.__exit__()


def test_golden_prompts_through_the_router_with_the_pool_pinned(
    pools: tuple[Worker, Worker], pin_router: RouterProcess
) -> None:
    golden = parse_golden(
        f'{{"prompt": "a banner \\"{PLAIN}\\"", "size": "512x256"}}\n', "ConfigMap g key k"
    )
    prompts = golden_report_prompts(golden, [21, 22], [])
    assert [(p.seed, p.size, p.line) for p in prompts] == [(21, "512x256", 1), (22, "512x256", 1)]
    pinned = pairs_from(
        Target.pinned("clean", pin_router.url, "main", TOKEN),
        Target.pinned("bad", pin_router.url, "main", TOKEN),
        prompts,
        size=None,
        steps=None,
    )
    direct = pairs_from_workers(
        ("clean", pools[0].url), ("bad", pools[1].url), prompts, size=None, steps=None
    )
    for via_router, via_worker in zip(pinned, direct, strict=True):
        # Reproducible from (prompt, seed, pool): the pinned render is the worker's own.
        assert via_router.stable.image == via_worker.stable.image
        assert via_router.candidate.image == via_worker.candidate.image
        assert text_verdict(via_router.stable).status == "passed"
        assert text_verdict(via_router.candidate).status == "failed"

    wrong = pairs_from(
        Target.pinned("clean", pin_router.url, "main", "not-the-token"),
        Target("bad", pin_router.url),
        prompts[:1],
        size=None,
        steps=None,
    )[0]
    assert wrong.stable.error is not None and "HTTP 403" in wrong.stable.error
    assert "not-the-token" not in wrong.stable.error
    # Without a pin the router's route decides: the stable drew it, whatever was asked.
    assert text_verdict(wrong.candidate).status == "passed", wrong.candidate
