"""The ``/docs`` page: the OpenAPI document rendered on the server as one self-contained HTML page.

Swagger UI or Redoc would load scripts from a CDN, which offline installs and locked-down networks cannot
reach, so the page is plain HTML with inline CSS and no script: operations grouped by tag, each with its
parameters, request body and responses, then every schema as a table of its properties. Everything taken
from the document is escaped (markupsafe); schema references become links within the page.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from markupsafe import Markup, escape

_REF_PREFIX = "#/components/schemas/"
_CONSTRAINTS = (
    ("minLength", "min length {}"),
    ("maxLength", "max length {}"),
    ("minimum", "≥ {}"),
    ("maximum", "≤ {}"),
    ("exclusiveMinimum", "> {}"),
    ("exclusiveMaximum", "< {}"),
    ("minItems", "min {} items"),
    ("maxItems", "max {} items"),
    ("pattern", "pattern {}"),
    ("format", "format {}"),
)

_CSS = """
:root { --fg:#1d2330; --muted:#5b6474; --line:#dfe3ea; --bg:#f6f7f9; --accent:#0b6e4f; }
* { box-sizing: border-box; }
body { margin:0; font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif; color:var(--fg); }
header { background:var(--accent); color:#fff; padding:1.2rem 2rem; }
header h1 { margin:0; font-size:1.6rem; } header p { margin:.3rem 0 0; opacity:.9; }
.layout { display:flex; align-items:flex-start; }
nav { position:sticky; top:0; width:19rem; max-height:100vh; overflow:auto; padding:1rem;
      border-right:1px solid var(--line); background:var(--bg); font-size:.85rem; }
nav h3 { margin:.8rem 0 .2rem; font-size:.8rem; text-transform:uppercase; color:var(--muted); }
nav a { display:block; color:var(--fg); text-decoration:none; padding:.1rem 0; overflow-wrap:anywhere; }
nav a:hover { color:var(--accent); }
main { flex:1; padding:1rem 2rem 4rem; min-width:0; }
h2 { border-bottom:2px solid var(--line); padding-bottom:.3rem; margin-top:2rem; }
.op { border:1px solid var(--line); border-radius:6px; margin:1rem 0; padding:.8rem 1rem; }
.op h4 { margin:0; font-size:1.05rem; font-family:ui-monospace,Menlo,Consolas,monospace; }
.method { display:inline-block; min-width:4.2rem; text-align:center; border-radius:4px; color:#fff;
          font-size:.8rem; padding:.1rem .4rem; margin-right:.5rem; }
.get { background:#2f6fb3; } .post { background:#16845b; } .put { background:#b7791f; }
.delete { background:#c53030; } .patch { background:#6b46c1; }
.summary { margin:.3rem 0; font-weight:600; } .desc { color:var(--muted); margin:.3rem 0; }
.badge { display:inline-block; font-size:.75rem; border:1px solid var(--accent); color:var(--accent);
         border-radius:3px; padding:0 .35rem; margin-left:.4rem; }
table { border-collapse:collapse; width:100%; margin:.4rem 0 .8rem; font-size:.88rem; }
th, td { border:1px solid var(--line); padding:.3rem .5rem; text-align:left; vertical-align:top; }
th { background:var(--bg); font-weight:600; }
pre { background:var(--bg); padding:.5rem .8rem; border-radius:4px; overflow:auto; }
code { font-family:ui-monospace,Menlo,Consolas,monospace; font-size:.85em; background:var(--bg);
       padding:0 .2rem; border-radius:3px; }
h5 { margin:.6rem 0 .2rem; font-size:.9rem; }
.req { color:#c53030; font-weight:600; } .muted { color:var(--muted); }
"""


def render(document: dict[str, Any]) -> str:
    """The whole page for an OpenAPI 3.x document."""
    info = document.get("info", {})
    operations = list(_operations(document))
    tags = [tag["name"] for tag in document.get("tags", [])]
    tags += sorted({op["tags"][0] for _, _, op in operations if op.get("tags")} - set(tags))
    tag_text = {tag["name"]: tag.get("description", "") for tag in document.get("tags", [])}
    by_tag = {
        tag: [(m, p, op) for m, p, op in operations if (op.get("tags") or [""])[0] == tag] for tag in tags
    }
    schemas = document.get("components", {}).get("schemas", {})

    nav: list[Markup] = []
    body: list[Markup] = []
    for tag in tags:
        if not by_tag[tag]:
            continue
        nav.append(Markup("<h3>{}</h3>").format(tag))
        body.append(Markup('<h2 id="tag-{0}">{0}</h2>').format(tag))
        if tag_text.get(tag):
            body.append(Markup('<p class="desc">{}</p>').format(_prose(tag_text[tag])))
        for method, path, op in by_tag[tag]:
            anchor = _anchor(op.get("operationId") or f"{method}-{path}")
            nav.append(Markup('<a href="#op-{}">{} {}</a>').format(anchor, method.upper(), path))
            body.append(_operation_html(anchor, method, path, op, document))
    if schemas:
        nav.append(Markup('<h3><a href="#schemas">Schemas</a></h3>'))
        body.append(Markup('<h2 id="schemas">Schemas</h2>'))
        body.extend(_schema_html(name, schema) for name, schema in schemas.items())

    title = info.get("title", "API")
    return str(
        Markup(
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            "<title>{title} API</title><style>{css}</style></head><body>"
            "<header><h1>{title} <small>{version}</small></h1><p>{description}</p></header>"
            '<div class="layout"><nav>{nav}</nav><main>{body}'
            '<p class="muted">The machine-readable document: <a href="/openapi.json">/openapi.json</a>'
            " (OpenAPI {openapi}).</p></main></div></body></html>"
        ).format(
            title=title,
            css=Markup(_CSS),  # a constant of this module  # noqa: S704
            version=info.get("version", ""),
            description=_prose(info.get("description", "")),
            nav=Markup("").join(nav),
            body=Markup("").join(body),
            openapi=document.get("openapi", ""),
        )
    )


def _operations(document: dict[str, Any]) -> Iterable[tuple[str, str, dict[str, Any]]]:
    for path, item in document.get("paths", {}).items():
        for method in ("get", "post", "put", "patch", "delete"):
            if method in item:
                yield method, path, item[method]


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text)


def _prose(text: str) -> Markup:
    """Escaped text with ``code`` spans and bare https links made clickable."""
    html = str(escape(text))
    html = re.sub(r"``?([^`]+)``?", r"<code>\1</code>", html)
    html = re.sub(r"(https://[^\s<)]+)", r'<a href="\1">\1</a>', html)
    return Markup(html)  # built only from escaped text  # noqa: S704


def _operation_html(
    anchor: str, method: str, path: str, op: dict[str, Any], document: dict[str, Any]
) -> Markup:
    parts = [
        Markup('<section class="op" id="op-{}"><h4><span class="method {}">{}</span>{}').format(
            anchor, method, method.upper(), path
        )
    ]
    if op.get("security"):
        schemes = document.get("components", {}).get("securitySchemes", {})
        names = [schemes.get(name, {}).get("name", name) for req in op["security"] for name in req]
        parts.append(Markup('<span class="badge">requires {}</span>').format(", ".join(names)))
    parts.append(Markup("</h4>"))
    parts.append(Markup('<p class="summary">{}</p>').format(op.get("summary", "")))
    if op.get("description"):
        parts.append(Markup('<p class="desc">{}</p>').format(_prose(op["description"])))

    if op.get("parameters"):
        rows = [
            Markup("<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>").format(
                param["name"],
                Markup(' <span class="req">*</span>') if param.get("required") else "",
                param["in"],
                _type(param.get("schema", {})),
                _describe(param.get("description", ""), {**param.get("schema", {}), **_example_of(param)}),
            )
            for param in op["parameters"]
        ]
        parts.append(
            Markup(
                "<h5>Parameters</h5><table><tr><th>name</th><th>in</th><th>type</th><th>description</th></tr>"
            )
        )
        parts.extend(rows)
        parts.append(Markup("</table>"))

    body = op.get("requestBody")
    if body:
        parts.append(Markup("<h5>Request body</h5>"))
        if body.get("description"):
            parts.append(Markup('<p class="desc">{}</p>').format(_prose(body["description"])))
        rows = [
            Markup("<tr><td><code>{}</code></td><td>{}</td></tr>").format(
                media, _type(content.get("schema", {}))
            )
            for media, content in body.get("content", {}).items()
        ]
        parts.append(Markup("<table><tr><th>media type</th><th>schema</th></tr>"))
        parts.extend(rows)
        parts.append(Markup("</table>"))
        examples = [c["example"] for c in body.get("content", {}).values() if "example" in c]
        if examples:
            parts.append(
                Markup("<h5>Example</h5><pre><code>{}</code></pre>").format(json.dumps(examples[0], indent=2))
            )

    rows = []
    for status, response in op.get("responses", {}).items():
        content = response.get("content", {})
        media = Markup("<br>").join(
            Markup("<code>{}</code> {}").format(name, _type(value.get("schema", {})))
            for name, value in content.items()
        )
        headers = Markup("<br>").join(
            Markup("<code>{}</code>: {}").format(name, header.get("description", ""))
            for name, header in response.get("headers", {}).items()
        )
        rows.append(
            Markup("<tr><td><b>{}</b></td><td>{}</td><td>{}</td><td>{}</td></tr>").format(
                status, _prose(response.get("description", "")), media or "—", headers
            )
        )
    parts.append(
        Markup(
            "<h5>Responses</h5><table><tr><th>status</th><th>description</th><th>body</th><th>headers</th></tr>"
        )
    )
    parts.extend(rows)
    parts.append(Markup("</table></section>"))
    return Markup("").join(parts)


def _schema_html(name: str, schema: dict[str, Any]) -> Markup:
    parts = [Markup('<section class="op" id="schema-{}"><h4>{}</h4>').format(_anchor(name), name)]
    if schema.get("description"):
        parts.append(Markup('<p class="desc">{}</p>').format(_prose(schema["description"])))
    properties = schema.get("properties")
    if properties:
        required = set(schema.get("required", []))
        parts.append(Markup("<table><tr><th>field</th><th>type</th><th>description</th></tr>"))
        parts.extend(
            Markup("<tr><td><code>{}</code>{}</td><td>{}</td><td>{}</td></tr>").format(
                field,
                Markup(' <span class="req">*</span>') if field in required else "",
                _type(sub),
                _describe(sub.get("description", ""), sub),
            )
            for field, sub in properties.items()
        )
        parts.append(Markup("</table>"))
        if schema.get("additionalProperties") is False:
            parts.append(Markup('<p class="muted">Unknown fields are refused.</p>'))
    else:
        parts.append(Markup("<p>{}</p>").format(_type(schema)))
    parts.append(Markup("</section>"))
    return Markup("").join(parts)


def _type(schema: Any) -> Markup:
    """A short, readable type: ``string``, ``array of <link>``, ``"ok"``, ``one of a, b``, ``X | null``."""
    if not isinstance(schema, dict) or not schema:
        return Markup("any")
    if "$ref" in schema:
        name = str(schema["$ref"]).removeprefix(_REF_PREFIX)
        return Markup('<a href="#schema-{}">{}</a>').format(_anchor(name), name)
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in schema:
            joiner = " & " if combinator == "allOf" else " | "
            return Markup(joiner).join(_type(sub) for sub in schema[combinator])  # a constant  # noqa: S704
    if "const" in schema:
        return Markup("<code>{}</code>").format(json.dumps(schema["const"]))
    if "enum" in schema:
        return Markup("one of {}").format(
            Markup(", ").join(Markup("<code>{}</code>").format(json.dumps(v)) for v in schema["enum"])
        )
    kind = schema.get("type", "any")
    if kind == "array":
        return Markup("array of {}").format(_type(schema.get("items", {})))
    if kind == "object" and isinstance(schema.get("additionalProperties"), dict):
        return Markup("object of {}").format(_type(schema["additionalProperties"]))
    if isinstance(kind, list):
        return Markup(" | ").join(escape(k) for k in kind)
    return escape(kind)


def _example_of(param: dict[str, Any]) -> dict[str, Any]:
    return {"x-example": param["example"]} if "example" in param else {}


def _describe(description: str, schema: dict[str, Any]) -> Markup:
    notes = [template.format(schema[key]) for key, template in _CONSTRAINTS if key in schema]
    if "default" in schema:
        notes.append(f"default {json.dumps(schema['default'])}")
    if "x-example" in schema:
        notes.append(f"e.g. {json.dumps(schema['x-example'])}")
    text = _prose(description)
    if notes:
        text += Markup(' <span class="muted">({})</span>').format("; ".join(notes))
    return text
