"""A static, self-contained HTML page for an AsyncAPI 3.0 document (no scripts, no network).

:func:`render_html` shows the servers, then each channel with its address, parameters,
operations (who publishes, which consumer groups receive), and its messages' headers and
payload fields; the payload Structs referenced from fields follow under "Schemas". Every
text comes from the document and is escaped.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["render_html"]

_STYLE = """
:root { color-scheme: light; --ink: #1b2430; --muted: #5b6776; --line: #d5dbe3;
  --accent: #0b5fff; --send: #0a7d45; --receive: #8a3ffc; --code: #f3f5f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif;
  color: var(--ink); background: #fbfcfd; }
header { background: #0f2747; color: #fff; padding: 24px 40px; }
header h1 { margin: 0 0 4px; font-size: 26px; }
header p { margin: 4px 0; color: #c9d6ea; max-width: 70em; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px;
  font-weight: 600; background: #e7eefc; color: var(--accent); margin-right: 6px; }
header .badge, header code { background: #26446d; color: #fff; }
main { display: flex; gap: 32px; padding: 24px 40px; }
nav { flex: 0 0 220px; position: sticky; top: 16px; align-self: flex-start; }
nav a { display: block; color: var(--accent); text-decoration: none; padding: 2px 0; }
nav h2 { font-size: 13px; text-transform: uppercase; color: var(--muted); }
section.content { flex: 1; min-width: 0; }
.channel, .schema, .servers { background: #fff; border: 1px solid var(--line);
  border-radius: 8px; padding: 16px 20px; margin-bottom: 20px; }
h2 { margin: 0 0 8px; font-size: 20px; }
h3 { margin: 16px 0 6px; font-size: 15px; color: var(--muted); }
code, .address { font-family: ui-monospace, "SFMono-Regular", Menlo, monospace;
  font-size: 13px; background: var(--code); padding: 1px 5px; border-radius: 4px; }
.address { display: inline-block; font-size: 14px; padding: 4px 8px; color: #0f2747; }
table { border-collapse: collapse; width: 100%; margin: 4px 0 8px; font-size: 14px; }
th, td { text-align: left; border-bottom: 1px solid var(--line); padding: 5px 8px;
  vertical-align: top; }
th { background: #f0f3f7; font-weight: 600; }
.op { margin: 4px 0; }
.send { background: #e3f5ec; color: var(--send); }
.receive { background: #f1e8ff; color: var(--receive); }
.required { color: #c0392b; font-weight: 600; }
.muted { color: var(--muted); }
"""


def render_html(document: Mapping[str, Any]) -> str:
    """The page for ``document`` (an AsyncAPI 3.0 document as built by ``asyncapi_document``)."""
    info = document.get("info", {})
    channels: Mapping[str, Any] = document.get("channels", {})
    operations: Mapping[str, Any] = document.get("operations", {})
    title = str(info.get("title", "AsyncAPI"))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_e(title)}</title><style>{_STYLE}</style></head><body>",
        "<header>",
        f"<h1>{_e(title)}</h1>",
        f'<p><span class="badge">AsyncAPI {_e(document.get("asyncapi", ""))}</span>'
        f'<span class="badge">version {_e(info.get("version", ""))}</span>'
        f'<span class="badge">{_e(document.get("defaultContentType", ""))}</span></p>',
        f"<p>{_text(info.get('description', ''))}</p>",
        "</header><main>",
        _nav(channels, document),
        '<section class="content">',
        _servers(document.get("servers", {})),
    ]
    for cid, channel in channels.items():
        parts.append(_channel(document, cid, channel, operations))
    parts.append(_schemas(document))
    parts.append("</section></main></body></html>")
    return "\n".join(parts) + "\n"


_CODE_SPAN = re.compile(r"``([^`]+)``|`([^`]+)`")


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _text(value: Any) -> str:
    """Escaped prose whose `code spans` (Markdown or reStructuredText) become ``<code>``."""
    return _CODE_SPAN.sub(lambda m: f"<code>{m.group(1) or m.group(2)}</code>", _e(value))


def _anchor(kind: str, name: str) -> str:
    return f"{kind}-" + "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def _nav(channels: Mapping[str, Any], document: Mapping[str, Any]) -> str:
    items = ["<nav><h2>Channels</h2>"]
    items += [f'<a href="#{_anchor("channel", cid)}">{_e(cid)}</a>' for cid in channels]
    schemas = document.get("components", {}).get("schemas", {})
    if schemas:
        items.append("<h2>Schemas</h2>")
        items += [f'<a href="#{_anchor("schema", name)}">{_e(name)}</a>' for name in schemas]
    items.append("</nav>")
    return "\n".join(items)


def _servers(servers: Mapping[str, Any]) -> str:
    if not servers:
        return ""
    rows = "".join(
        f"<tr><td>{_e(name)}</td><td><code>{_e(s.get('host', ''))}</code></td>"
        f"<td>{_e(s.get('protocol', ''))}</td><td>{_text(s.get('description', ''))}</td></tr>"
        for name, s in servers.items()
    )
    return (
        '<div class="servers"><h2>Servers</h2><table><tr><th>Server</th><th>Host</th>'
        f"<th>Protocol</th><th>Description</th></tr>{rows}</table></div>"
    )


def _resolve(document: Mapping[str, Any], node: Any) -> Any:
    """Follow local ``$ref`` pointers (``#/a/b``) until a node that is not a reference."""
    for _ in range(32):  # a cycle of references ends here rather than looping
        if not (isinstance(node, Mapping) and isinstance(node.get("$ref"), str)):
            return node
        ref: str = node["$ref"]
        if not ref.startswith("#/"):
            return node
        target: Any = document
        for token in ref[2:].split("/"):
            token = token.replace("~1", "/").replace("~0", "~")
            if not isinstance(target, Mapping) or token not in target:
                return {}
            target = target[token]
        node = target
    return node


def _channel(
    document: Mapping[str, Any], cid: str, channel: Mapping[str, Any], operations: Mapping[str, Any]
) -> str:
    parts = [
        f'<div class="channel" id="{_anchor("channel", cid)}">',
        f"<h2>{_e(channel.get('title', cid))}</h2>",
        f'<div class="address">{_e(channel.get("address", ""))}</div>',
        f"<p>{_text(channel.get('description', ''))}</p>",
    ]
    parameters = channel.get("parameters", {})
    if parameters:
        parts.append(
            "<h3>Parameters</h3><table><tr><th>Name</th><th>Description</th><th>Examples</th></tr>"
        )
        for name, parameter in parameters.items():
            parameter = _resolve(document, parameter)
            examples = ", ".join(f"<code>{_e(x)}</code>" for x in parameter.get("examples", []))
            parts.append(
                f"<tr><td><code>{_e(name)}</code></td>"
                f"<td>{_text(parameter.get('description', ''))}</td><td>{examples}</td></tr>"
            )
        parts.append("</table>")
    mine = [
        (oid, op)
        for oid, op in operations.items()
        if _resolve(document, op.get("channel", {})) is channel
    ]
    if mine:
        parts.append("<h3>Operations</h3>")
        for oid, op in mine:
            action = str(op.get("action", ""))
            extra = "".join(
                f" <span class='muted'>{label}</span> <code>{_e(op[key])}</code>"
                for label, key in (
                    ("group", "x-deltran-consumer-group"),
                    ("ordering", "x-deltran-ordering"),
                    ("handler", "x-deltran-handler"),
                )
                if key in op
            )
            parts.append(
                f'<div class="op"><span class="badge {_e(action)}">{_e(action)}</span>'
                f"<code>{_e(oid)}</code>{extra} <span class='muted'>"
                f"{_text(op.get('summary', ''))}</span></div>"
            )
    for name, message in channel.get("messages", {}).items():
        parts.append(_message(document, name, _resolve(document, message)))
    parts.append("</div>")
    return "\n".join(parts)


def _message(document: Mapping[str, Any], name: str, message: Mapping[str, Any]) -> str:
    parts = [f"<h3>Message {_e(message.get('name', name))}</h3>"]
    if message.get("summary"):
        parts.append(f"<p>{_text(message['summary'])}</p>")
    parts.append(
        f"<p class='muted'>content type <code>{_e(message.get('contentType', ''))}</code></p>"
    )
    headers = _resolve(document, message.get("headers", {}))
    if headers:
        parts.append("<h3>Headers</h3>")
        parts.append(_fields_table(document, headers))
    payload = message.get("payload", {})
    parts.append("<h3>Payload</h3>")
    ref = payload.get("$ref") if isinstance(payload, Mapping) else None
    if isinstance(ref, str):
        schema_name = ref.rsplit("/", 1)[-1]
        parts.append(
            f'<p>Schema <a href="#{_anchor("schema", schema_name)}">{_e(schema_name)}</a></p>'
        )
    parts.append(_fields_table(document, _resolve(document, payload)))
    return "\n".join(parts)


def _fields_table(document: Mapping[str, Any], schema: Mapping[str, Any]) -> str:
    properties: Mapping[str, Any] = schema.get("properties", {})
    if not properties:
        return f"<p class='muted'>{_text(schema.get('description', 'Any JSON object.'))}</p>"
    required = set(schema.get("required", []))
    rows = ["<table><tr><th>Field</th><th>Type</th><th>Required</th><th>Description</th></tr>"]
    for field_name, field_schema in properties.items():
        description = (
            field_schema.get("description", "") if isinstance(field_schema, Mapping) else ""
        )
        mark = "<span class='required'>yes</span>" if field_name in required else "no"
        rows.append(
            f"<tr><td><code>{_e(field_name)}</code></td>"
            f"<td>{_type_html(document, field_schema)}</td><td>{mark}</td>"
            f"<td>{_text(description)}</td></tr>"
        )
    rows.append("</table>")
    return "".join(rows)


def _type_html(document: Mapping[str, Any], schema: Any, depth: int = 0) -> str:
    """A short, escaped description of a JSON schema's type and constraints."""
    if not isinstance(schema, Mapping) or depth > 8:
        return "any"
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#{_anchor("schema", name)}">{_e(name)}</a>'
    for combinator in ("anyOf", "oneOf"):
        if combinator in schema:
            return " | ".join(_type_html(document, s, depth + 1) for s in schema[combinator])
    if "const" in schema:
        return f"<code>{_e(json.dumps(schema['const']))}</code>"
    if "enum" in schema:
        return "one of " + ", ".join(f"<code>{_e(json.dumps(v))}</code>" for v in schema["enum"])
    kind = schema.get("type", "any")
    text = _e(" | ".join(kind) if isinstance(kind, list) else kind)
    if kind == "array":
        text = f"array of {_type_html(document, schema.get('items', {}), depth + 1)}"
    elif kind == "object" and isinstance(schema.get("additionalProperties"), Mapping):
        value = _type_html(document, schema["additionalProperties"], depth + 1)
        text = f"map of string to {value}"
    notes = []
    if "format" in schema:
        notes.append(_e(schema["format"]))
    if "pattern" in schema:
        notes.append(f"<code>{_e(schema['pattern'])}</code>")
    if "minLength" in schema or "maxLength" in schema:
        notes.append(f"{_e(schema.get('minLength', 0))}..{_e(schema.get('maxLength', ''))} chars")
    for bound, sign in (("minimum", "&ge;"), ("maximum", "&le;")):
        if bound in schema:
            notes.append(f"{sign} {_e(schema[bound])}")
    if "default" in schema:
        notes.append(f"default <code>{_e(json.dumps(schema['default']))}</code>")
    return text + (f" <span class='muted'>({', '.join(notes)})</span>" if notes else "")


def _schemas(document: Mapping[str, Any]) -> str:
    schemas: Mapping[str, Any] = document.get("components", {}).get("schemas", {})
    parts = []
    for name, schema in schemas.items():
        parts.append(f'<div class="schema" id="{_anchor("schema", name)}">')
        parts.append(f"<h2>{_e(schema.get('title', name))}</h2>")
        if schema.get("description"):
            parts.append(f"<p>{_text(schema['description'])}</p>")
        parts.append(_fields_table(document, schema))
        parts.append("</div>")
    return "\n".join(parts)
