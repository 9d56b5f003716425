"""Strict query templates and the PromQL the Prometheus provider sends."""

from __future__ import annotations

import pytest

from modelfleet.api.canary import MetricSpec
from modelfleet.canary.ports import MetricQuery
from modelfleet.providers.prometheus import builtin_query, query_for, samples_query
from modelfleet.providers.template import TemplateError, render_query

VALUES = {
    "namespace": "team-a",
    "pool": "sdxl-v2",
    "stablePool": "sdxl-v1",
    "candidatePool": "sdxl-v2",
    "interval": "30s",
}


def test_render_all_keys_and_spacing() -> None:
    t = (
        'sum(rate(x{namespace="{{namespace}}",pool="{{ pool }}"}[{{interval}}])) / '
        "{{stablePool}}-{{candidatePool}}"
    )
    assert render_query(t, VALUES) == (
        'sum(rate(x{namespace="team-a",pool="sdxl-v2"}[30s])) / sdxl-v1-sdxl-v2'
    )
    # single braces are PromQL, not template syntax
    assert render_query('up{job="a"}', VALUES) == 'up{job="a"}'


@pytest.mark.parametrize(
    ("template", "needle"),
    [
        ("x{{podName}}", "unknown template key 'podName'"),
        ("x{{Pool}}", "unknown template key 'Pool'"),
        ("x{{}}", "empty placeholder"),
        ("x{{pool}", "unbalanced template braces: '{{'"),
        ("x{pool}}", "unbalanced template braces: '}}'"),
        ("{{pool}}}}", "unbalanced template braces: '}}' at position 8"),
        ("{{ {{pool}} }}", "unbalanced"),
    ],
)
def test_render_errors_name_the_problem(template: str, needle: str) -> None:
    with pytest.raises(TemplateError, match=None) as e:
        render_query(template, VALUES)
    assert needle in str(e.value)


def test_missing_value_is_an_error_not_empty() -> None:
    with pytest.raises(TemplateError, match="no value for template key 'pool'"):
        render_query("{{pool}}", {"namespace": "a"})


def test_value_with_braces_cannot_break_out() -> None:
    assert render_query("{{pool}}", {**VALUES, "pool": "{{namespace}}"}) == "{{namespace}}"


def test_builtin_queries() -> None:
    assert builtin_query("error-rate", "ns", "p", 30) == (
        '(sum(rate(modelfleet_router_upstream_requests_total{namespace="ns",pool="p",'
        'outcome=~"upstream_error|timeout|connect_error"}[30s])) or vector(0)) / '
        'sum(rate(modelfleet_router_upstream_requests_total{namespace="ns",pool="p",'
        'outcome!~"busy|client_error"}[30s]))'
    )
    assert builtin_query("latency-p99", "ns", "p", 10) == (
        "histogram_quantile(0.99, sum by (le) (rate("
        'modelfleet_router_upstream_duration_seconds_bucket{namespace="ns",pool="p"}[10s])))'
    )
    assert samples_query("ns", "p", 10) == (
        'sum(increase(modelfleet_router_upstream_requests_total{namespace="ns",pool="p",'
        'outcome!~"busy|client_error"}[10s]))'
    )


def test_query_for_custom_template() -> None:
    metric = MetricSpec(name="c", query='max(x{pool="{{pool}}"}[{{interval}}])', max=1)
    q = MetricQuery("ns", "cand", metric, 15, stable_pool="st", candidate_pool="cand")
    assert query_for(q) == 'max(x{pool="cand"}[15s])'
