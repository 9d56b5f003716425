"""Backoff policy and retry scheduling of failed reconciles (pure logic, a real event loop)."""

from __future__ import annotations

import asyncio

import pytest
from kubernetes.client.rest import ApiException

from modelfleet.controllers.requeue import Requeue, backoff_delay, namespace_terminating
from polling import wait_for_async


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0.0), (1, 0.5), (2, 1.0), (3, 2.0), (6, 16.0), (7, 30.0), (1000, 30.0)],
)
def test_backoff_delay_doubles_up_to_the_cap(failures: int, delay: float) -> None:
    assert backoff_delay(failures) == delay


def _api_error(status: int, body: str) -> ApiException:
    exc = ApiException(status=status, reason="x")
    exc.body = body
    return exc


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (
            _api_error(
                403,
                '{"message":"deployments.apps \\"p\\" is forbidden: unable to create new '
                'content in namespace t because it is being terminated"}',
            ),
            True,
        ),
        (_api_error(403, '{"message":"exceeded quota: q"}'), False),
        (_api_error(500, "being terminated"), False),
        (RuntimeError("being terminated"), False),
    ],
)
def test_namespace_terminating(exc: BaseException, expected: bool) -> None:
    assert namespace_terminating(exc) is expected


def test_failed_key_is_retried_until_it_succeeds() -> None:
    async def scenario() -> tuple[list[str], dict[object, int]]:
        calls: list[str] = []
        done = asyncio.Event()

        async def retry(key: object) -> None:
            calls.append(str(key))
            if len(calls) < 3:
                requeue.failed(key)
            else:
                requeue.succeeded(key)
                done.set()

        requeue = Requeue(retry, base_s=0.001, cap_s=0.01)
        requeue.failed("ns/p")
        await asyncio.wait_for(done.wait(), timeout=5)
        return calls, dict(requeue.failures)

    calls, failures = asyncio.run(scenario())
    assert calls == ["ns/p"] * 3
    assert failures == {}


def test_forget_cancels_the_pending_retry() -> None:
    async def scenario() -> list[object]:
        calls: list[object] = []

        async def retry(key: object) -> None:
            calls.append(key)

        requeue = Requeue(retry, base_s=0.05)
        requeue.failed("gone")
        requeue.forget("gone")
        requeue.failed("kept")
        # The kept key's retry runs after the forgotten one would have: if the
        # forgotten timer were still armed, it would have fired first.
        await wait_for_async(lambda: calls, timeout=5, interval=0.01, what="a retry ran")
        return calls

    assert asyncio.run(scenario()) == ["kept"]


def test_cancel_all_leaves_nothing_to_fire() -> None:
    async def scenario() -> tuple[list[object], dict[object, int]]:
        calls: list[object] = []
        fired = asyncio.Event()

        async def retry(key: object) -> None:
            calls.append(key)
            fired.set()

        requeue = Requeue(retry, base_s=0.02)
        requeue.failed("a")
        requeue.failed("b")
        requeue.cancel_all()
        probe = Requeue(retry, base_s=0.05)  # fires after a and b would have
        probe.failed("probe")
        await asyncio.wait_for(fired.wait(), timeout=5)
        return calls, dict(requeue.failures)

    calls, failures = asyncio.run(scenario())
    assert calls == ["probe"]
    assert failures == {}
