"""The committed OpenAPI document is the one generated from the wire models and the route table,
it is whole, and every service's routes are exactly the operations it says that service serves."""

from __future__ import annotations

import json
from typing import Any

import pytest
from aiohttp import web
from pydantic import SecretStr

from interlink import openapi
from interlink.app import create_app as create_interlink
from interlink.settings import InterlinkSettings
from kod import routes, wire
from sidecars.docker.app import create_app as create_sidecar
from sidecars.docker.settings import DockerSidecarSettings


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


# --- every service's routes against the document --------------------------------------------


def _served(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route of an app (HEAD is aiohttp's automatic twin of GET)."""
    return {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }


def _documented(spec: dict[str, Any], service: str) -> set[tuple[str, str]]:
    """(method, path) of every operation the document says `service` serves."""
    return {
        (method, path)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if service in op["x-served-by"]
    }


def route_drift(app: web.Application, service: str, spec: dict[str, Any]) -> list[str]:
    """What a service's routes and the document disagree on, in words (empty: they agree)."""
    served, documented = _served(app), _documented(spec, service)
    return [f"{m.upper()} {p}: served by {service} but not in the document" for m, p in sorted(served - documented)] + [
        f"{m.upper()} {p}: in the document for {service} but not served" for m, p in sorted(documented - served)
    ]


def _interlink_app() -> web.Application:
    return create_interlink(InterlinkSettings.model_validate({"token": "t", "create_token": False}))


def _sidecar_app() -> web.Application:
    return create_sidecar(DockerSidecarSettings(token=SecretStr("t"), docker_url="unix:///nonexistent.sock"))


SERVICES = {routes.INTERLINK: _interlink_app, routes.SIDECAR: _sidecar_app}


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_every_route_of_every_service_is_in_the_document_and_every_path_is_served(service: str) -> None:
    spec = json.loads(openapi.SPEC_PATH.read_text())
    assert route_drift(SERVICES[service](), service, spec) == []
    assert _documented(spec, service), f"the document describes nothing for {service}"


@pytest.mark.parametrize("service", sorted(SERVICES))
def test_a_route_missing_from_the_document_or_a_path_without_a_route_is_caught(service: str) -> None:
    spec = json.loads(openapi.SPEC_PATH.read_text())
    app = SERVICES[service]()

    async def extra(request: web.Request) -> web.Response:
        return web.Response()

    app.router.add_post("/v1/undocumented", extra)
    assert route_drift(app, service, spec) == [f"POST /v1/undocumented: served by {service} but not in the document"]
    ghost = json.loads(openapi.SPEC_PATH.read_text())
    ghost["paths"]["/v1/ghost"] = {"get": {"x-served-by": [service]}}
    assert route_drift(SERVICES[service](), service, ghost) == [f"GET /v1/ghost: in the document for {service} but not served"]


def test_a_handler_map_that_does_not_match_the_table_is_refused() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.Response()

    complete = {op.operation_id: handler for op in routes.operations(routes.SIDECAR)}
    routes.add_routes(web.Application(), routes.SIDECAR, complete)
    with pytest.raises(ValueError, match=r"missing \['watch'\]"):
        routes.add_routes(web.Application(), routes.SIDECAR, {k: v for k, v in complete.items() if k != "watch"})
    with pytest.raises(ValueError, match=r"not in the table \['exec'\]"):
        routes.add_routes(web.Application(), routes.SIDECAR, {**complete, "exec": handler})


def test_paths_without_a_token_are_exactly_those_the_document_marks_open() -> None:
    spec = json.loads(openapi.SPEC_PATH.read_text())
    for service in SERVICES:
        marked = {path for path, item in spec["paths"].items() for op in item.values()
                  if op.get("security") == [] and service in op["x-served-by"]}
        assert routes.open_paths(service) == marked
    assert routes.open_paths(routes.INTERLINK) == {"/openapi.json"}
    assert routes.open_paths(routes.SIDECAR) == {"/healthz"}
