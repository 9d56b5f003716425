"""docs/api-reference.md lists every field and CEL rule, and is never stale."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from modelfleet.api import cli, crdgen, docgen

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "docs" / "api-reference.md"


def _model_paths(model: type[BaseModel], prefix: str) -> list[str]:
    """Every field path of a pydantic model, by alias, walked independently of docgen."""
    out: list[str] = []
    for name, info in model.model_fields.items():
        path = f"{prefix}.{info.alias or name}"
        out.append(path)
        for sub in _nested_models(info.annotation):
            list_like = _is_list(info.annotation)
            out += _model_paths(sub, path + ("[]" if list_like else ""))
    return out


def _nested_models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _nested_models(arg)]


def _is_list(annotation: Any) -> bool:
    if getattr(annotation, "__origin__", None) is list:
        return True
    return any(_is_list(a) for a in getattr(annotation, "__args__", ()))


def _spec_model(info: crdgen.CrdInfo) -> type[BaseModel]:
    models = _nested_models(info.model.model_fields["spec"].annotation)
    assert models
    return models[0]


@pytest.mark.parametrize("info", crdgen.CRDS, ids=lambda i: i.kind)
def test_every_spec_field_is_documented(info: crdgen.CrdInfo) -> None:
    text = docgen.render()
    section = text.split(f"## {info.kind}\n", 1)[1].split("\n## ", 1)[0]
    paths = _model_paths(_spec_model(info), "spec")
    assert paths
    for path in paths:
        assert f"| `{path}` |" in section, f"{info.kind}: {path} missing from the reference"


@pytest.mark.parametrize("info", crdgen.CRDS, ids=lambda i: i.kind)
def test_every_documented_field_has_type_and_description(info: crdgen.CrdInfo) -> None:
    doc = docgen.kind_doc(info)
    for row in doc.fields:
        assert row.type, row.path
        assert row.description, f"{info.kind}: {row.path} has no description"


def _rules(node: Any) -> list[dict[str, str]]:
    if isinstance(node, dict):
        own = list(node.get("x-kubernetes-validations", []))
        return own + [r for v in node.values() for r in _rules(v)]
    if isinstance(node, list):
        return [r for v in node for r in _rules(v)]
    return []


def test_every_cel_rule_and_message_is_listed() -> None:
    text = docgen.render()
    rules = [r for info in crdgen.CRDS for r in _rules(crdgen.openapi_schema(info.model))]
    assert len(rules) >= 7
    for rule in rules:
        assert rule["message"] in text
        assert docgen._cell(rule["rule"]) in text


def test_constraints_and_defaults_are_shown() -> None:
    doc = docgen.kind_doc(crdgen.CRDS[0])
    rows = {r.path: r for r in doc.fields}
    batch = rows["spec.batching.maxBatchSize"]
    assert (batch.type, batch.default) == ("integer", "`4`")
    assert batch.constraints == [">= 1", "<= 64"]
    assert "one of `sd15`" in rows["spec.model.family"].constraints[0]
    assert rows["spec.model.source"].required


def test_reference_on_disk_is_up_to_date() -> None:
    assert not docgen.is_stale(REFERENCE), (
        "docs/api-reference.md is stale; run `modelfleet crds docs --out docs/api-reference.md`"
    )


def test_check_fails_on_stale_docs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    crdgen.write(tmp_path / "crds")
    docs = tmp_path / "api-reference.md"
    parser = _parser()
    args = parser.parse_args(
        ["crds", "check", "--out", str(tmp_path / "crds"), "--docs", str(docs)]
    )
    assert args.handler(args) == 1
    assert "stale API reference" in capsys.readouterr().err
    args = parser.parse_args(["crds", "docs", "--out", str(docs)])
    assert args.handler(args) == 0
    args = parser.parse_args(
        ["crds", "check", "--out", str(tmp_path / "crds"), "--docs", str(docs)]
    )
    assert args.handler(args) == 0
    # --docs '' keeps the old CRD-only behaviour
    docs.write_text("stale")
    args = parser.parse_args(["crds", "check", "--out", str(tmp_path / "crds"), "--docs", ""])
    assert args.handler(args) == 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers())
    return parser


def test_troubleshooting_lists_every_reason() -> None:
    from modelfleet.builders import poolstatus
    from modelfleet.canary import reasons
    from modelfleet.routing import compile as routing_compile

    text = (ROOT / "docs" / "troubleshooting.md").read_text()
    found = [
        value
        for module in (poolstatus, reasons, routing_compile)
        for name, value in vars(module).items()
        if name.isupper() and isinstance(value, str) and value[:1].isupper()
    ]
    assert len(found) > 25
    for reason in [*found, "InvalidSpec"]:
        assert f"| `{reason}` |" in text, f"{reason} missing from docs/troubleshooting.md"
