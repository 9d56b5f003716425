"""Generate CustomResourceDefinitions from the pydantic models.

The models are the single source of truth; `crds/*.yaml` is their output and a
test fails when the two drift apart.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema
from pydantic_core import core_schema

from modelfleet import GROUP, VERSION
from modelfleet.api.canary import Canary
from modelfleet.api.modelpool import ModelPool
from modelfleet.api.routingpolicy import RoutingPolicy


@dataclass(frozen=True)
class CrdInfo:
    model: type[BaseModel]
    kind: str
    plural: str
    singular: str
    short_names: tuple[str, ...]
    printer_columns: tuple[dict[str, Any], ...]
    scale: bool = False


def _col(name: str, type_: str, path: str, description: str, priority: int = 0) -> dict[str, Any]:
    col: dict[str, Any] = {
        "name": name,
        "type": type_,
        "jsonPath": path,
        "description": description,
    }
    if priority:
        col["priority"] = priority
    return col


AGE = _col("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

CRDS: tuple[CrdInfo, ...] = (
    CrdInfo(
        model=ModelPool,
        kind="ModelPool",
        plural="modelpools",
        singular="modelpool",
        short_names=("mp",),
        printer_columns=(
            _col("Ready", "integer", ".status.readyReplicas", "Ready worker pods."),
            _col("Replicas", "integer", ".spec.replicas", "Desired worker pods."),
            _col(
                "Desired",
                "integer",
                ".status.desiredReplicas",
                "Replicas the autoscaler wants (spec.autoscaling).",
            ),
            _col("Backend", "string", ".spec.backend", "diffusers or a hosted provider API."),
            _col("Model", "string", ".spec.model.source", "Model source."),
            _col("Family", "string", ".spec.model.family", "Model family.", priority=1),
            _col("Phase", "string", ".status.phase", "Pool phase."),
            AGE,
        ),
        scale=True,
    ),
    CrdInfo(
        model=RoutingPolicy,
        kind="RoutingPolicy",
        plural="routingpolicies",
        singular="routingpolicy",
        short_names=("rp",),
        printer_columns=(
            _col(
                "Ready",
                "string",
                '.status.conditions[?(@.type=="Ready")].status',
                "Whether every route resolves.",
            ),
            _col(
                "Reason",
                "string",
                '.status.conditions[?(@.type=="Ready")].reason',
                "Why not ready.",
            ),
            AGE,
        ),
    ),
    CrdInfo(
        model=Canary,
        kind="Canary",
        plural="canaries",
        singular="canary",
        short_names=("can",),
        printer_columns=(
            _col("Phase", "string", ".status.phase", "Canary phase."),
            _col("Step", "integer", ".status.currentStep", "Index into spec.steps."),
            _col("Weight", "integer", ".status.canaryWeight", "Candidate traffic percent."),
            _col("Stable", "string", ".spec.stablePool", "Stable pool."),
            _col("Candidate", "string", ".spec.candidatePool", "Candidate pool."),
            _col("Message", "string", ".status.message", "Latest message.", priority=1),
            AGE,
        ),
    ),
)


class _CrdSchemaGenerator(GenerateJsonSchema):
    """Emit defaults for default_factory fields so the API server applies them too."""

    def get_default_value(self, schema: core_schema.WithDefaultSchema) -> Any:
        factory = schema.get("default_factory")
        if factory is not None and not schema.get("default_factory_takes_data"):
            return _wire_default(factory())  # type: ignore[call-arg]
        return super().get_default_value(schema)


def _wire_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        # The API server validates a default as written (CEL rules included),
        # without filling in nested defaults first, so write it out in full.
        return value.model_dump(by_alias=True, exclude_none=True, mode="json")
    if isinstance(value, list):
        return [
            v.model_dump(by_alias=True, exclude_none=True, mode="json")
            if isinstance(v, BaseModel)
            else v
            for v in value
        ]
    return value


_DROP_KEYS = {"title", "$defs"}


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Inline refs, turn Optional into nullable and JSON Schema 2020 into OpenAPI v3."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    if "$ref" in node:
        target = defs[node.pop("$ref").split("/")[-1]]
        node = {**target, **node}
    any_of = node.get("anyOf")
    if any_of is not None:
        non_null = [s for s in any_of if s.get("type") != "null"]
        if len(non_null) == 1 and len(any_of) == 2:
            node.pop("anyOf")
            inner = non_null[0]
            if "$ref" in inner:
                inner = {**defs[inner["$ref"].split("/")[-1]]}
            merged_rules = [
                *inner.get("x-kubernetes-validations", []),
                *node.pop("x-kubernetes-validations", []),
            ]
            node = {**inner, **node, "nullable": True}
            if merged_rules:
                node["x-kubernetes-validations"] = merged_rules
            if node.get("default", 0) is None:
                node.pop("default")
    if "const" in node:
        node["enum"] = [node.pop("const")]
    if "exclusiveMinimum" in node and not isinstance(node["exclusiveMinimum"], bool):
        node["minimum"] = node["exclusiveMinimum"]
        node["exclusiveMinimum"] = True
    if "exclusiveMaximum" in node and not isinstance(node["exclusiveMaximum"], bool):
        node["maximum"] = node["exclusiveMaximum"]
        node["exclusiveMaximum"] = True
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP_KEYS:
            continue
        if key == "properties":
            out[key] = {k: _structural(v, defs) for k, v in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = _structural(value, defs)
        elif key == "default" and value is None:
            continue
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
        out.pop("additionalProperties", None)
    return out


def _strip_defaults(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _strip_defaults(v) for k, v in node.items() if k != "default"}
    if isinstance(node, list):
        return [_strip_defaults(v) for v in node]
    return node


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, schema_generator=_CrdSchemaGenerator)
    defs = raw.get("$defs", {})
    schema: dict[str, Any] = _structural(raw, defs)
    props = schema["properties"]
    props["apiVersion"] = {
        "type": "string",
        "description": "APIVersion of this object: modelfleet.io/v1alpha1.",
    }
    props["kind"] = {"type": "string", "description": "Kind of this object."}
    props["metadata"] = {"type": "object"}
    if "status" in props:
        props["status"] = _strip_defaults(props["status"])
    schema["required"] = ["spec"]
    return schema


def crd_manifest(info: CrdInfo) -> dict[str, Any]:
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {"openAPIV3Schema": openapi_schema(info.model)},
        "subresources": {"status": {}},
        "additionalPrinterColumns": list(info.printer_columns),
    }
    if info.scale:
        version["subresources"]["scale"] = {
            "specReplicasPath": ".spec.replicas",
            "statusReplicasPath": ".status.replicas",
        }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{info.plural}.{GROUP}",
            "labels": {"app.kubernetes.io/part-of": "modelfleet"},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": info.kind,
                "listKind": f"{info.kind}List",
                "plural": info.plural,
                "singular": info.singular,
                "shortNames": list(info.short_names),
                "categories": ["modelfleet"],
            },
            "versions": [version],
        },
    }


HEADER = "# Generated by `modelfleet crds generate` from modelfleet.api; do not edit.\n"


def render(info: CrdInfo) -> str:
    body = yaml.safe_dump(crd_manifest(info), sort_keys=False, width=100)
    # Each file opens its own YAML document: `helm show crds` concatenates the files
    # as they are, and users pipe that into `kubectl apply` to upgrade the CRDs.
    return "---\n" + HEADER + body


def rendered_files() -> dict[str, str]:
    return {f"{GROUP}_{info.plural}.yaml": render(info) for info in CRDS}


def write(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in rendered_files().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written


def stale_files(directory: Path) -> list[str]:
    """Names of files in `directory` that differ from what the models generate."""
    return [
        name
        for name, text in rendered_files().items()
        if not (directory / name).is_file() or (directory / name).read_text() != text
    ]
