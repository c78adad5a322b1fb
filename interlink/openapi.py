"""The OpenAPI 3.1 document of the InterLink API, generated from the wire models of `kod.wire`.

    python -m interlink.openapi            # print the document
    python -m interlink.openapi --write    # regenerate the committed interlink/openapi.json
    python -m interlink.openapi --check    # exit 1 when the committed file is stale

The schemas come from `kod.wire.SCHEMA_MODELS` (pydantic's JSON Schema, which OpenAPI 3.1 uses
as is); the paths are the route table `kod.routes.OPERATIONS`, from which interlink and every
sidecar register their routes too (`x-served-by` names the services that serve an operation). A
unit test fails when the committed file differs from what this module generates, and another when
a service's routes and the document disagree.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from kod import __version__, wire
from kod.routes import JSON, OPERATIONS, TEXT, UPGRADE, Operation

#: Where the committed document lives (shipped as package data).
SPEC_PATH = Path(__file__).with_name("openapi.json")
REF = "#/components/schemas/{model}"

#: Error answers every authenticated operation may give, besides its own.
_COMMON_ERRORS: dict[str, str] = {
    "401": "Missing or wrong bearer token.",
    "503": "A sidecar (or, on a sidecar, its container engine) cannot be reached now; retry.",
}


def _schemas() -> dict[str, Any]:
    _, top = models_json_schema([(m, "validation") for m in wire.SCHEMA_MODELS], ref_template=REF)
    return dict(sorted(top.get("$defs", {}).items()))


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _query_parameters(model: type[BaseModel], schemas: dict[str, Any]) -> list[dict[str, Any]]:
    props = schemas[model.__name__].get("properties", {})
    params = []
    for name, info in model.model_fields.items():
        schema = dict(props[name])
        description = schema.pop("description", None) or info.description
        param: dict[str, Any] = {"name": name, "in": "query", "required": False, "schema": schema}
        if description:
            param["description"] = description
        params.append(param)
    return params


def _operation(op: Operation, schemas: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"operationId": op.operation_id, "summary": op.summary}
    params: list[dict[str, Any]] = [
        {"name": p, "in": "path", "required": True, "schema": {"type": "string"}} for p in op.path_params
    ]
    if op.query is not None:
        params += _query_parameters(op.query, schemas)
    if params:
        out["parameters"] = params
    if op.body is not None:
        out["requestBody"] = {"required": True, "content": {JSON: {"schema": _ref(op.body)}}}
    responses: dict[str, Any] = {}
    for status, (description, model, media) in op.responses.items():
        if media == UPGRADE:
            responses[status] = {"description": description}
            continue
        content: dict[str, Any] = {media: {"schema": _ref(model)} if model else {}}
        if media == TEXT:
            content[media] = {"schema": {"type": "string"}}
        responses[status] = {"description": description, "content": content}
    errors = {**_COMMON_ERRORS, **op.errors} if op.authenticated else dict(op.errors)
    for status in sorted(errors):
        responses[status] = {
            "description": errors[status],
            "content": {JSON: {"schema": _ref(wire.ErrorBody)}},
        }
    out["responses"] = responses
    if not op.authenticated:
        out["security"] = []
    out["x-served-by"] = sorted(op.served_by)
    if op.optional_for:
        out["x-optional-for"] = sorted(op.optional_for)
    return out


def build_spec() -> dict[str, Any]:
    """The whole OpenAPI 3.1 document, deterministic (same input, same bytes)."""
    schemas = _schemas()
    paths: dict[str, dict[str, Any]] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method] = _operation(op, schemas)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "InterLink API (KubernetesOnDesktop)",
            "version": __version__,
            "description": (wire.__doc__ or "").strip(),
        },
        "servers": [{"url": "http://127.0.0.1:3000", "description": "interlink's default address"}],
        "security": [{"bearerAuth": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearerAuth": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "The token from interlink's token file (or the sidecar's).",
                }
            },
        },
    }


def render(spec: dict[str, Any]) -> str:
    """The committed text form: two-space indent, a final newline."""
    return json.dumps(spec, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Print, write or check the generated document."""
    parser = argparse.ArgumentParser(
        prog="python -m interlink.openapi",
        description="Generate the InterLink API's OpenAPI 3.1 document from the kod.wire models.",
    )
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help=f"write it to {SPEC_PATH} (commit the result)")
    group.add_argument("--check", action="store_true", help="exit 1 if the committed file is out of date")
    args = parser.parse_args(argv)
    text = render(build_spec())
    if args.write:
        SPEC_PATH.write_text(text)
        print(f"wrote {SPEC_PATH}", file=sys.stderr)
    elif args.check:
        current = SPEC_PATH.read_text() if SPEC_PATH.exists() else ""
        if current != text:
            print(f"{SPEC_PATH} is out of date: run `python -m interlink.openapi --write`", file=sys.stderr)
            return 1
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
