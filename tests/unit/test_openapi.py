"""The committed OpenAPI document is the one generated from the wire models, and it is whole."""

from __future__ import annotations

import json
from typing import Any

from interlink import openapi
from kod import wire


def test_committed_spec_matches_the_wire_models() -> None:
    committed = openapi.SPEC_PATH.read_text()
    generated = openapi.render(openapi.build_spec())
    assert committed == generated, (
        "interlink/openapi.json is stale: run `.venv/bin/python -m interlink.openapi --write` and commit it"
    )


def test_check_flag_fails_on_a_stale_file(tmp_path, monkeypatch) -> None:
    stale = tmp_path / "openapi.json"
    stale.write_text('{"openapi": "3.0.0"}\n')
    monkeypatch.setattr(openapi, "SPEC_PATH", stale)
    assert openapi.main(["--check"]) == 1
    assert openapi.main(["--write"]) == 0
    assert openapi.main(["--check"]) == 0


def _refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) else []
        return found + [r for v in node.values() for r in _refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in _refs(v)]
    return []


def test_every_reference_resolves_and_every_wire_model_is_described() -> None:
    spec = json.loads(openapi.SPEC_PATH.read_text())
    schemas = spec["components"]["schemas"]
    missing = {r for r in _refs(spec) if r.removeprefix("#/components/schemas/") not in schemas}
    assert not missing
    assert {m.__name__ for m in wire.SCHEMA_MODELS} <= set(schemas)
    assert spec["openapi"].startswith("3.1")


def test_query_parameters_are_those_the_models_accept() -> None:
    spec = json.loads(openapi.SPEC_PATH.read_text())
    logs = spec["paths"]["/v1/pods/{namespace}/{name}/containers/{container}/logs"]["get"]
    query = {p["name"] for p in logs["parameters"] if p["in"] == "query"}
    assert query == set(wire.LogOptions.model_fields)
    delete = spec["paths"]["/v1/pods/{namespace}/{name}"]["delete"]
    assert {p["name"] for p in delete["parameters"] if p["in"] == "query"} == {"uid", "gracePeriodSeconds"}
