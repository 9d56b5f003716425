"""The pydantic models accept the examples and reject every invalid case."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from api_cases import INVALID, Invalid, example_docs, example_files
from modelfleet.api import Canary, ModelPool, parse
from modelfleet.api.common import parse_duration
from modelfleet.canary.replay import parse_golden


@pytest.mark.parametrize("path", example_files(), ids=lambda p: p.name)
def test_examples_are_valid(path: Path) -> None:
    docs = example_docs(path)
    configmaps = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            continue
        obj = parse(doc)
        assert obj.metadata.name
        replay = getattr(obj.spec, "replay", None)
        if replay is not None:  # its golden prompts ship in the same file, and parse
            assert parse_golden(configmaps[replay.config_map][replay.key], path.name)


@pytest.mark.parametrize("case", INVALID, ids=lambda c: c.id)
def test_invalid_cases_rejected(case: Invalid) -> None:
    with pytest.raises(ValidationError):
        parse(case.manifest())


def test_defaults_match_design() -> None:
    pool = ModelPool.model_validate(
        {"kind": "ModelPool", "metadata": {"name": "p"}, "spec": {"model": {"source": "file:///m"}}}
    )
    assert pool.spec.backend == "diffusers"
    assert pool.spec.batching_or_default().max_batch_size == 4
    assert pool.spec.batching_or_default().max_latency_ms == 80
    assert pool.spec.gpu_or_default().count == 1
    assert pool.spec.replicas == 1
    canary = Canary.model_validate(
        {
            "kind": "Canary",
            "metadata": {"name": "c"},
            "spec": {"routingPolicy": "rp", "route": "r", "stablePool": "a", "candidatePool": "b"},
        }
    )
    assert canary.spec.steps == [10, 30, 60, 100]
    by_name = {m.name: m for m in canary.spec.analysis.metrics}
    assert set(by_name) == {"error-rate", "service-time"}
    assert by_name["error-rate"].max == 0.05 and by_name["error-rate"].max_ratio_to_stable is None
    assert by_name["service-time"].max_ratio_to_stable == 1.5
    assert canary.spec.analysis.reference_lookback == "60s"
    assert canary.spec.analysis.load_match_tolerance == 0.25


def test_wire_round_trip_uses_camel_case() -> None:
    doc = yaml.safe_load((Path(__file__).parents[2] / "examples" / "canary.yaml").read_text())
    wire = parse(doc).wire()
    assert wire["spec"]["candidatePool"] == "production-v2"
    assert "candidate_pool" not in wire["spec"]
    assert parse(wire).wire() == wire


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1s", 1), ("250ms", 0.25), ("1m30s", 90), ("1.5h", 5400), ("10m", 600)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "5", "5 minutes", "1d", "-1s"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_operator_is_not_importable_as_package() -> None:
    import operator

    assert hasattr(operator, "itemgetter"), "the standard library's operator must win"
    assert "site-packages" not in (operator.__file__ or "") or "lib/python" in operator.__file__
