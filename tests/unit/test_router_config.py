"""Static config: validated by the API models, errors name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from modelfleet.router.config import ConfigError, load_static_config, parse_static_config


def _doc() -> dict[str, Any]:
    return {
        "policies": [
            {
                "apiVersion": "modelfleet.io/v1alpha1",
                "kind": "RoutingPolicy",
                "metadata": {"name": "main"},
                "spec": {
                    "admission": {"maxInFlight": 8},
                    "routes": [
                        {"name": "fast", "match": {"tiers": ["preview"]}, "pool": "small"},
                        {"name": "all", "pool": "big", "fallbacks": ["small"]},
                    ],
                },
            }
        ],
        "endpoints": {"small": ["http://127.0.0.1:8081/"], "big": ["http://127.0.0.1:8082"]},
    }


def test_valid() -> None:
    snap = parse_static_config(_doc())
    (p,) = snap.policies
    assert p.key == "default/main"
    assert p.admission.max_in_flight == 8
    assert snap.endpoints[("default", "small")] == ("http://127.0.0.1:8081",)


def _set(doc: dict[str, Any], path: list[Any], value: Any) -> dict[str, Any]:
    node: Any = doc
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("path", "value", "needle"),
    [
        (
            ["policies", 0, "spec", "routes", 1, "pool"],
            "Not_A_Name",
            "policies[0].spec.routes[1].pool",
        ),
        (
            ["policies", 0, "spec", "routes", 0, "match", "tiers"],
            ["Gold_1"],
            "policies[0].spec.routes[0].match.tiers[0]",
        ),
        (  # a tier the policy does not declare (spec.tiers; none: preview, production)
            ["policies", 0, "spec", "routes", 0, "match", "tiers"],
            ["gold"],
            "spec.routes[0].match.tiers[0] 'gold' is not a declared tier (preview, production)",
        ),
        (
            ["policies", 0, "spec", "routes", 0, "match", "promptPatterns"],
            ["("],
            "policies[0].spec.routes[0].match.promptPatterns",
        ),
        (
            ["policies", 0, "spec", "admission", "maxInFlight"],
            0,
            "policies[0].spec.admission.maxInFlight",
        ),
        (["policies", 0, "spec", "routes", 0, "bogus"], 1, "policies[0].spec.routes[0].bogus"),
        (["policies", 0, "spec", "routes"], [], "policies[0].spec.routes"),
        (["policies", 0, "kind"], "Canary", "policies[0].kind"),
        (["policies", 0, "metadata", "name"], "", "policies[0].metadata.name"),
        (["endpoints", "small"], ["127.0.0.1:8081"], "endpoints.small[0]"),
        (["endpoints", "small"], "http://x", "endpoints.small"),
        (["extra"], 1, "extra"),
        (["modelNames"], {"big": ["SD 3"]}, "modelNames.big[0]"),
        (["modelNames"], {"big": "sd3"}, "modelNames.big"),
        (["modelNames"], {"big": ["sd3", "sd3"]}, "modelNames.big: repeated: sd3"),
    ],
)
def test_invalid_names_the_field(path: list[Any], value: Any, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_static_config(_set(_doc(), path, value))
    assert needle in str(err.value)


def test_model_names_per_namespace() -> None:
    doc = _doc()
    doc["policies"][0]["metadata"]["namespace"] = "team"
    doc["modelNames"] = {"big": ["sd3.5-medium", "sd3"], "small": []}
    snap = parse_static_config(doc)
    assert snap.model_names[("team", "big")].names == ("sd3.5-medium", "sd3")
    assert ("team", "small") not in snap.model_names
    assert parse_static_config(_doc()).model_names == {}


def test_duplicate_policy() -> None:
    doc = _doc()
    doc["policies"].append(doc["policies"][0])
    with pytest.raises(ConfigError, match=r"policies\[1\]\.metadata\.name"):
        parse_static_config(doc)


def test_files(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(yaml.safe_dump(_doc()))
    assert load_static_config(good).policies
    bad = tmp_path / "bad.yaml"
    bad.write_text("policies: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_static_config(bad)
    with pytest.raises(ConfigError, match="cannot read"):
        load_static_config(tmp_path / "missing.yaml")
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_static_config(scalar)
