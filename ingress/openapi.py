"""``GET /openapi.json`` (the OpenAPI 3.1 document of every route) and ``GET /docs`` (it, as a page).

The document is built from the app's own URL map and the table in :mod:`ingress.openapi_spec`: paths and
path-parameter schemas come from the Flask rules and their converters, bodies from the pydantic models
(``models_json_schema``, all under ``components/schemas``). It is built once per app, on first request.
The page is rendered on the server from the same document (:mod:`ingress.openapi_page`): no script and
no CDN, so it works offline and behind any firewall.
https://spec.openapis.org/oas/v3.1.0
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from importlib import metadata
from typing import Any

from flask import Blueprint, Flask, Response, current_app, jsonify
from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from werkzeug.routing import Rule
from werkzeug.routing.converters import NumberConverter

from ingress.auth import HEADER as API_KEY_HEADER
from ingress.openapi_spec import OPERATIONS, TAGS, ErrorBody, Operation, Param, Reply

bp = Blueprint("openapi", __name__)

DOCUMENT_KEY = "wapipe.openapi"
SECURITY_SCHEME = "ApiKey"
# Methods Flask adds to every rule on its own; they are not operations of ours.
IMPLICIT_METHODS = frozenset({"HEAD", "OPTIONS"})
_REF_TEMPLATE = "#/components/schemas/{model}"


@bp.get("/openapi.json")
def openapi_json() -> Response:
    return jsonify(document(current_app))


@bp.get("/docs")
def docs() -> Response:
    from ingress.openapi_page import render

    return Response(render(document(current_app)), mimetype="text/html")


def document(app: Flask) -> dict[str, Any]:
    """The app's OpenAPI document, built on first use and kept on the app (routes don't change)."""
    built = app.extensions.get(DOCUMENT_KEY)
    if built is None:
        built = app.extensions[DOCUMENT_KEY] = build_document(app)
    return built


def openapi_path(rule: Rule) -> str:
    """``/api/v1/conversations/<int:conversation_id>/messages`` -> ``.../{conversation_id}/messages``."""
    return re.sub(r"<(?:[^<>:]+:)?([^<>:]+)>", r"{\1}", rule.rule)


def routes(app: Flask) -> Iterator[tuple[str, str, Rule]]:
    """``(METHOD, openapi path, rule)`` for every operation the app serves."""
    for rule in app.url_map.iter_rules():
        for method in sorted((rule.methods or set()) - IMPLICIT_METHODS):
            yield method, openapi_path(rule), rule


def undocumented(app: Flask) -> list[str]:
    """``"METHOD /path"`` of every route the table does not describe (a test keeps this empty)."""
    return sorted(f"{m} {p}" for m, p, _ in routes(app) if f"{m} {p}" not in OPERATIONS)


def build_document(app: Flask) -> dict[str, Any]:
    # An undocumented route is left out here, not fatal: the unit test names it.
    served = [
        (method, path, rule, OPERATIONS[f"{method} {path}"])
        for method, path, rule in routes(app)
        if f"{method} {path}" in OPERATIONS
    ]
    refs, schemas = _component_schemas([op for *_, op in served])

    paths: dict[str, dict[str, Any]] = {}
    for method, path, rule, op in sorted(served, key=lambda entry: (entry[1], entry[0])):
        paths.setdefault(path, {})[method.lower()] = _operation(method, rule, op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "wapipe",
            "version": _version(),
            "summary": "Event-driven WhatsApp messaging pipeline",
            "description": (
                "Provider webhooks in, canonical events onto the queues, and the REST API internal services"
                f" call. Every /api route needs an {API_KEY_HEADER} header from WAPIPE_API_KEYS. Every"
                ' error is JSON: {"error": {"code": "...", "message": "..."}}.'
            ),
        },
        "tags": [{"name": name, "description": text} for name, text in TAGS.items()],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                SECURITY_SCHEME: {
                    "type": "apiKey",
                    "in": "header",
                    "name": API_KEY_HEADER,
                    "description": "One of the keys in WAPIPE_API_KEYS.",
                }
            },
        },
    }


def _version() -> str:
    try:
        return metadata.version("wapipe")
    except metadata.PackageNotFoundError:
        return "0"


# --- schemas ------------------------------------------------------------------------------------------------

_ModelKey = tuple[type[BaseModel], JsonSchemaMode]


def _models(value: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model class in a schema spec (a model, or a dict/list holding models)."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _models(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _models(item)


def _component_schemas(ops: list[Operation]) -> tuple[dict[_ModelKey, dict[str, Any]], dict[str, Any]]:
    """Each model's ``$ref`` and the ``components/schemas`` holding them all.

    Request bodies use pydantic's validation schema (what it accepts); responses its serialization
    schema (what the views produce).
    """
    wanted: dict[_ModelKey, None] = {(ErrorBody, "serialization"): None}
    for op in ops:
        if op.body is not None:
            wanted.update(((model, "validation"), None) for model in _models(op.body.schema))
        for reply in op.responses.values():
            wanted.update(((model, "serialization"), None) for model in _models(reply.schema))
        if op.error_schema is not None:
            wanted[(op.error_schema, "serialization")] = None
    refs, top = models_json_schema(list(wanted), ref_template=_REF_TEMPLATE)
    return dict(refs), dict(sorted(top.get("$defs", {}).items()))


def _schema(value: Any, mode: JsonSchemaMode, refs: dict[_ModelKey, dict[str, Any]]) -> Any:
    """A schema spec with each model replaced by its ``$ref``."""
    if isinstance(value, type) and issubclass(value, BaseModel):
        return refs[(value, mode)]
    if isinstance(value, dict):
        return {key: _schema(item, mode, refs) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_schema(item, mode, refs) for item in value]
    return value


# --- operations ---------------------------------------------------------------------------------------------


def _operation(
    method: str, rule: Rule, op: Operation, refs: dict[_ModelKey, dict[str, Any]]
) -> dict[str, Any]:
    several = len((rule.methods or set()) - IMPLICIT_METHODS) > 1
    out: dict[str, Any] = {
        "tags": [op.tag],
        "summary": op.summary,
        "operationId": f"{rule.endpoint}.{method.lower()}" if several else rule.endpoint,
    }
    if op.description:
        out["description"] = op.description
    names = re.findall(r"\{([^{}]+)\}", openapi_path(rule))  # in path order
    parameters = [_path_parameter(rule, name, op) for name in names]
    parameters += [_parameter(param) for param in op.params]
    for parameter in parameters:
        if parameter["name"] in op.examples:
            parameter["example"] = op.examples[parameter["name"]]
    if parameters:
        out["parameters"] = sorted(parameters, key=lambda p: (["path", "query", "header"].index(p["in"]),))
    if op.body is not None:
        spec = op.body.schema
        per_media = (
            spec
            if isinstance(spec, dict) and set(spec) <= set(op.body.media) and spec
            else dict.fromkeys(op.body.media, spec)
        )
        content = {
            media: {"schema": _schema(schema, "validation", refs)} for media, schema in per_media.items()
        }
        if op.body.example is not None:
            for media in content.values():
                media["example"] = op.body.example
        out["requestBody"] = {"required": True, "content": content}
        if op.body.description:
            out["requestBody"]["description"] = op.body.description

    error_schema = op.error_schema or ErrorBody
    replies = dict(op.responses)
    if op.api_key:
        out["security"] = [{SECURITY_SCHEME: []}]
        replies.setdefault(
            401, Reply(f"unauthorized: {API_KEY_HEADER} is missing or not a configured key.", error=True)
        )
        replies.setdefault(
            503,
            Reply(
                "database_unavailable: PostgreSQL cannot be reached; database_timeout: it did not answer"
                " within its statement timeout. Nothing was stored. Retry after Retry-After.",
                headers={"Retry-After": "Seconds to wait before retrying."},
                error=True,
            ),
        )
    if op.body is not None:
        replies.setdefault(
            413, Reply("request_entity_too_large: the body exceeds WAPIPE_MAX_BODY_BYTES.", error=True)
        )
    out["responses"] = {
        str(status): _response(reply, error_schema, refs) for status, reply in sorted(replies.items())
    }
    return out


def _response(
    reply: Reply, error_schema: type[BaseModel], refs: dict[_ModelKey, dict[str, Any]]
) -> dict[str, Any]:
    out: dict[str, Any] = {"description": reply.description}
    schema = error_schema if reply.error and reply.schema is None else reply.schema
    if schema is not None:
        out["content"] = {reply.media: {"schema": _schema(schema, "serialization", refs)}}
    if reply.headers:
        out["headers"] = {
            name: {"description": text, "schema": {"type": "string"}} for name, text in reply.headers.items()
        }
    return out


def _parameter(param: Param) -> dict[str, Any]:
    return {
        "name": param.name,
        "in": param.where,
        "required": param.required,
        "description": param.description,
        "schema": param.schema,
    }


def _path_parameter(rule: Rule, name: str, op: Operation) -> dict[str, Any]:
    converter = rule._converters[name]  # werkzeug keeps no public accessor for a rule's converters
    schema: dict[str, Any]
    if isinstance(converter, NumberConverter):
        is_int = converter.num_convert is int
        schema = {"type": "integer" if is_int else "number"}
        minimum = converter.min if converter.min is not None else (None if converter.signed else 0)
        if minimum is not None:
            schema["minimum"] = minimum
        if converter.max is not None:
            schema["maximum"] = converter.max
    else:
        schema = {"type": "string", "pattern": f"^{converter.regex}$"}
    return {
        "name": name,
        "in": "path",
        "required": True,
        "description": op.path_params.get(name, ""),
        "schema": schema,
    }
