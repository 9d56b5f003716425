"""The CRD generator emits structural schemas and crds/ is never stale."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from modelfleet.api import crdgen

CRDS_DIR = Path(__file__).resolve().parents[2] / "crds"


def test_crds_directory_is_up_to_date() -> None:
    stale = crdgen.stale_files(CRDS_DIR)
    assert not stale, f"crds/ is stale ({stale}); run `make crds`"


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        out.append((path, node))
        for key, value in node.get("properties", {}).items():
            out += _walk(value, f"{path}.{key}")
        if isinstance(node.get("items"), dict):
            out += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            out += _walk(node["additionalProperties"], f"{path}{{}}")
    return out


@pytest.mark.parametrize("info", crdgen.CRDS, ids=lambda i: i.kind)
def test_schema_is_structural(info: crdgen.CrdInfo) -> None:
    schema = crdgen.openapi_schema(info.model)
    for path, node in _walk(schema):
        for banned in ("$ref", "anyOf", "allOf", "oneOf", "$defs", "title", "const"):
            assert banned not in node, f"{info.kind}{path} has {banned}"
        assert "type" in node, f"{info.kind}{path} has no type"
        scalar_item = path.endswith(("[]", "{}")) and node["type"] != "object"
        if path.startswith(".spec") and path.count(".") >= 2 and not scalar_item:
            assert node.get("description"), f"{info.kind}{path} has no description"


@pytest.mark.parametrize("info", crdgen.CRDS, ids=lambda i: i.kind)
def test_manifest_shape(info: crdgen.CrdInfo) -> None:
    crd = crdgen.crd_manifest(info)
    version = crd["spec"]["versions"][0]
    assert crd["metadata"]["name"] == f"{info.plural}.modelfleet.io"
    assert version["subresources"]["status"] == {}
    assert crd["spec"]["names"]["shortNames"] == list(info.short_names)
    assert version["additionalPrinterColumns"]


def test_canary_columns_and_rules() -> None:
    crd = crdgen.crd_manifest(crdgen.CRDS[2])
    version = crd["spec"]["versions"][0]
    names = [c["name"] for c in version["additionalPrinterColumns"]]
    assert names[:5] == ["Phase", "Step", "Weight", "Stable", "Candidate"]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = [r["rule"] for r in spec["x-kubernetes-validations"]]
    assert "self.stablePool != self.candidatePool" in rules
    assert spec["properties"]["steps"]["x-kubernetes-list-type"] == "set"


def test_nullable_optional_fields() -> None:
    schema = crdgen.openapi_schema(crdgen.CRDS[0].model)
    vae = schema["properties"]["spec"]["properties"]["model"]["properties"]["vae"]
    assert vae["nullable"] is True
    assert vae["type"] == "object"
    assert "source" in vae["required"]
