"""The Prometheus provider's pure parts for the rank tests: offset in the PromQL, the
service-time series turned into strata, hits. (Against a real Prometheus:
tests/integration/process/test_providers_prometheus.py.)"""

from __future__ import annotations

import math

import pytest

from modelfleet.canary.statistics import Histogram
from modelfleet.providers.prometheus import (
    Sample,
    _hits,
    builtin_query,
    samples_query,
    service_measurement,
)

SEL = 'namespace="ns",pool="p"'


def test_offset_goes_on_every_range_selector() -> None:
    assert builtin_query("service-time", "ns", "p", 30) == (
        f"sum by (batch_size, le) (increase(modelfleet_router_service_time_seconds_bucket"
        f"{{{SEL}}}[30s]))"
    )
    assert builtin_query("service-time", "ns", "p", 30, 120) == (
        f"sum by (batch_size, le) (increase(modelfleet_router_service_time_seconds_bucket"
        f"{{{SEL}}}[30s] offset 120s))"
    )
    for builtin in ("error-rate", "latency-p95", "text-accuracy", "text-pass-rate"):
        plain = builtin_query(builtin, "ns", "p", 10)
        back = builtin_query(builtin, "ns", "p", 10, 45)
        assert back == plain.replace("[10s]", "[10s] offset 45s"), builtin
        assert plain.count("[10s]") == back.count("offset 45s") >= 1
    assert samples_query("ns", "p", 10, "error-rate", 7).endswith("[10s] offset 7s))")
    assert samples_query("ns", "p", 10, "text-pass-rate", 7).endswith("[10s] offset 7s))")


def series(batch: str, *cumulative: tuple[str, float]) -> list[Sample]:
    return [Sample({"batch_size": batch, "le": le}, v) for le, v in cumulative]


def test_service_time_series_become_ordered_strata() -> None:
    result = [
        *series("5-8", ("0.01", 0.0), ("0.02", 2.5), ("+Inf", 2.5)),
        *series("1", ("0.01", 1.0), ("0.02", 3.0), ("+Inf", 4.0)),
        *series("2", ("0.01", 0.0), ("0.02", 0.0), ("+Inf", 0.0)),  # idle: left out
        *series("3", ("0.01", math.nan), ("0.02", math.nan), ("+Inf", math.nan)),
    ]
    m = service_measurement(result)
    assert m.error is None and not m.no_series
    assert m.strata == (
        ("1", Histogram((0.01, 0.02), (1.0, 2.0, 1.0))),
        ("5-8", Histogram((0.01, 0.02), (0.0, 2.5, 0.0))),
    )
    assert m.samples == 6  # 6.5 observations (increase() extrapolates), rounded
    # Pooled: 1, 4.5, 1 per bucket; rank 3.25 in (0.01, 0.02]: 0.01 + 0.01 * 2.25 / 4.5.
    assert m.value == pytest.approx(0.015)


@pytest.mark.parametrize(
    ("result", "error"),
    [
        (
            [Sample({"le": "0.01"}, 1.0)],
            "service-time: series {'le': '0.01'} lacks the batch_size or le label",
        ),
        (
            [Sample({"batch_size": "1", "le": "soon"}, 1.0)],
            "service-time: le 'soon' is not a number",
        ),
        (
            series("4", ("0.01", 1.0), ("0.02", 2.0)),
            "service-time: batch_size '4': histogram: cumulative buckets need a +Inf bucket",
        ),
        (
            [*series("1", ("0.01", 1.0), ("+Inf", 1.0)), *series("2", ("0.02", 1), ("+Inf", 1))],
            "service-time: strata have different bucket bounds",
        ),
    ],
)
def test_malformed_service_time_series_are_errors(result: list[Sample], error: str) -> None:
    m = service_measurement(result)
    assert m.error is not None and m.error.startswith(error)


def test_no_series_and_no_observations() -> None:
    none = service_measurement([])
    assert (none.value, none.samples, none.no_series, none.strata) == (None, 0, True, ())
    idle = service_measurement(series("1", ("0.01", 0.0), ("+Inf", 0.0)))
    assert (idle.value, idle.samples, idle.no_series, idle.strata) == (None, 0, False, ())


@pytest.mark.parametrize(
    ("builtin", "value", "total", "samples", "hits"),
    [
        ("error-rate", 0.1, 100.4, 100, pytest.approx(10.04)),
        ("error-rate", 1.0, 10.4, 10, 10.0),  # never more than the rounded samples
        ("text-pass-rate", 0.5, 40.0, 40, 20.0),
        ("text-accuracy", 0.7, 40.0, 40, None),  # a mean, not a proportion
        ("latency-p95", 0.2, 40.0, 40, None),
        (None, 3.0, 40.0, 40, None),  # custom queries
        ("error-rate", math.inf, 40.0, 40, None),
    ],
)
def test_hits(builtin: str | None, value: float, total: float, samples: int, hits: object) -> None:
    assert _hits(builtin, value, total, samples) == hits
