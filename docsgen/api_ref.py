"""The control API reference, rendered from the app's OpenAPI schema and its code.

The app is built offline: a :class:`~adapters.service.server.Service` for one
Yeastar and one Webex PBX (so every route exists, the webhooks included) with
adapters that never connect and an in-memory store.  From it:

- the OpenAPI schema gives each route's method, path, parameters, request
  body (with every field's type and rules), success status and docstring;
- each route's dependencies give the role it needs
  (:meth:`~adapters.service.api.ApiContext.requires` closes over the role);
- the source gives the error codes: every ``ApiError(status, "code", detail)``
  in ``adapters/service/api*.py`` and every ``Rejected("code", detail)`` in
  ``engine/``, with the detail sentence the caller reads.  A route lists the
  codes its handler raises itself or through the functions it calls
  (by name, within the API modules).

New route modules (``api_<family>.py``) and new routes appear by themselves.
"""

from __future__ import annotations

import ast
import inspect
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, APIWebSocketRoute

if TYPE_CHECKING:
    from adapters.service.server import Service

ROOT = Path(__file__).resolve().parent.parent
#: The route modules, and the module their supervisor actions feed the engine through.
API_MODULES = [
    *sorted((ROOT / "adapters" / "service").glob("api*.py")),
    ROOT / "adapters" / "service" / "call_actions.py",
]
ENGINE_MODULES = sorted((ROOT / "engine").glob("*.py"))

#: What a caller should make of each error code (the detail sentences say the rest).
MEANINGS = {
    "unauthorized": "No token, or one the service does not know: send `Authorization: Bearer <token>`.",
    "forbidden": "The token's user has a role below what the request needs; the detail names both.",
    "invalid_json": "The body is not JSON.",
    "invalid_request": "A field is missing, unknown or out of range; the detail names it.",
    "not_found": "No such transfer, operation, path, call leg (`channel_id`) or parked call.",
    "method_not_allowed": "The path exists but not with this HTTP method.",
    "too_large": "The request is too large.",
    "not_allowed": "The operation does not fit the transfer's state (or the platform); the detail names "
    "the state and the operations it allows. Nothing changed.",
    "transfer_in_progress": "That call already has an active transfer: operate it instead (to park one of "
    "its legs, abort it first).",
    "no_active_call": "The extension has no call the service tracks.",
    "ambiguous": "The extension has several calls and none is clearly the one talking: name the call "
    "by `channel_id`.",
    "conflict": "An `Idempotency-Key` reused with a different body, or a transfer id already in use.",
    "pbx_error": "The PBX refused the request (the detail carries its errcode and message), or did not "
    "confirm it in time (the service reconciles; read the transfer).",
    "pbx_unavailable": "The service is not connected to that PBX right now; retry later.",
    "store_unavailable": "The service could not record the decision first, so it sent nothing to the "
    "PBX; retry once the store is writable.",
    "internal_error": "A bug: the service's log has the traceback.",
    "no_rules": "The service runs without a rules file (`[rules] path`).",
    "invalid_rules": "The rules file cannot be used (the detail names the rule, the key and where); "
    "the rules in force stay.",
    "invalid": "The engine refused an incomplete request (the API's validation normally answers first).",
}

#: Example request bodies for the curl lines (a test validates each against the route's model).
EXAMPLE_BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/transfers"): {
        "extension": "2005",
        "number": "5503301",
        "policy": {"no_answer_timeout_s": 15, "fallback_numbers": ["2008"]},
    },
    ("POST", "/v1/calls/{channel_id}/monitor"): {"mode": "listen", "monitor": "2001"},
    ("POST", "/v1/calls/monitor"): {"mode": "barge", "monitor": "2001", "extension": "2005"},
    ("POST", "/v1/calls/park"): {"extension": "2005"},
    ("POST", "/v1/calls/hangup"): {"extension": "2005"},
    ("POST", "/v1/parked/{slot}/retrieve"): {"extension": "2008"},
}


# -- the app, offline ------------------------------------------------------------


class _Offline:
    """A PBX adapter that is never started: the app is only asked for its schema."""

    def __init__(self, platform: str) -> None:
        self.platform = platform
        self.capabilities = ("blind", "attended", "swap") + (("threeway",) if platform == "yeastar" else ())
        self.connected = False
        self.detail = "offline (documentation build)"

    async def start(self, sink: Any) -> None:
        raise RuntimeError("the documentation app never connects")

    async def execute(self, request: Any) -> Any:
        raise RuntimeError("the documentation app never connects")

    async def query_calls(self) -> None:
        return None

    async def close(self) -> None:
        return None


def offline_service() -> Service:
    """A service with one Yeastar and one Webex PBX and the example rules file, built without I/O:
    every route, metric and optional part exists, nothing connects."""
    from adapters.service.config import Config, RulesConfig, StoreConfig, WebexPbx, YeastarPbx
    from adapters.service.server import Service

    yeastar = YeastarPbx(
        kind="yeastar", name="acme", base_url="https://pbx.invalid", client_id="d", client_secret="d"
    )  # type: ignore[arg-type]
    webex = WebexPbx(kind="webex", name="globex", access_token="d", webhook_secret="d")  # type: ignore[arg-type]
    config = Config(
        pbx=(yeastar, webex),
        store=StoreConfig(path=Path(":memory:")),
        rules=RulesConfig(path=ROOT / "examples" / "rules.toml"),
    )
    service = Service(config, adapters={"acme": _Offline("yeastar"), "globex": _Offline("webex")})  # type: ignore[dict-item]
    service.store.close()
    return service


def offline_app() -> FastAPI:
    """The control API of :func:`offline_service`."""
    return offline_service().app


def api_routes(routes: Any) -> Iterator[APIRoute | APIWebSocketRoute]:
    """The app's routes, those of included routers too (FastAPI ≥ 0.16x keeps an included
    router as one entry holding the original router)."""
    for route in routes:
        if isinstance(route, APIRoute | APIWebSocketRoute):
            yield route
        original = getattr(route, "original_router", None)
        if original is not None:
            yield from api_routes(original.routes)


def route_role(route: APIRoute | APIWebSocketRoute) -> str | None:
    """The role a route requires, read from the ``requires(role)`` dependency it carries."""
    dependant = getattr(route, "dependant", None)
    stack = [dependant] if dependant is not None else []
    while stack:
        current = stack.pop()
        call = getattr(current, "call", None)
        if call is not None and call.__qualname__.startswith("ApiContext.requires."):
            role = inspect.getclosurevars(call).nonlocals.get("role")
            if isinstance(role, str):
                return role
        stack.extend(current.dependencies)
    return None


# -- error codes from the source ---------------------------------------------------


@dataclass(frozen=True)
class Raised:
    status: int | None  # None: decided by the engine-refusal handler (409, 404 for not_found)
    code: str
    detail: str
    where: str


def _hole(node: ast.expr) -> str:
    """What an f-string hole stands for: ``{name}`` for ``found.name`` or ``stored['name']``."""
    if isinstance(node, ast.Name):
        return "{" + node.id + "}"
    if isinstance(node, ast.Attribute):
        return "{" + node.attr + "}"
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return "{" + str(node.slice.value) + "}"
    return "{…}"


def _text(node: ast.expr) -> str:
    """A detail argument as the caller reads it, the f-string holes named."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            part.value if isinstance(part, ast.Constant) else _hole(part.value)  # type: ignore[attr-defined]
            for part in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _text(node.left) + _text(node.right)
    return _hole(node)


def _raised_in(node: ast.AST, where: str) -> Iterator[Raised]:
    for call in ast.walk(node):
        if not isinstance(call, ast.Call):
            continue
        name = call.func.id if isinstance(call.func, ast.Name) else getattr(call.func, "attr", "")
        args = call.args
        if name == "ApiError" and len(args) >= 3 and isinstance(args[0], ast.Constant):
            code = args[1]
            if isinstance(code, ast.Constant) and isinstance(code.value, str):
                yield Raised(int(args[0].value), code.value, _text(args[2]), where)
        elif name == "Rejected" and len(args) >= 2 and isinstance(args[0], ast.Constant):
            yield Raised(None, str(args[0].value), _text(args[1]), where)
        elif name == "JSONResponse" and len(args) >= 2 and isinstance(args[0], ast.Dict):
            body = dict(zip(args[0].keys, args[0].values, strict=True))
            keys = {k.value: v for k, v in body.items() if isinstance(k, ast.Constant)}
            status = args[1]
            code = keys.get("error")
            if isinstance(code, ast.Constant) and isinstance(status, ast.Constant) and "detail" in keys:
                yield Raised(int(status.value), str(code.value), _text(keys["detail"]), where)


@dataclass
class _Function:
    raised: list[Raised]
    calls: set[str]


def _functions(paths: list[Path]) -> dict[str, _Function]:
    """Every function (nested ones too) in ``paths``: the errors it raises itself and what it calls."""
    found: dict[str, _Function] = {}
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                where = f"{path.stem}.{node.name}"
                own = [
                    child
                    for child in node.body
                    if not isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
                ]
                raised = [r for child in own for r in _raised_in(child, where)]
                calls = {
                    c.func.id if isinstance(c.func, ast.Name) else c.func.attr
                    for child in own
                    for c in ast.walk(child)
                    if isinstance(c, ast.Call) and isinstance(c.func, ast.Name | ast.Attribute)
                }
                entry = found.setdefault(node.name, _Function([], set()))
                entry.raised += raised
                entry.calls |= calls
    return found


def all_errors() -> list[Raised]:
    """Every error the API can answer with, from the API modules and the engine."""
    found = [
        r for path in API_MODULES + ENGINE_MODULES for r in _raised_in(ast.parse(path.read_text()), path.stem)
    ]
    from adapters.service.api import _STATUS_CODES

    known = {r.code for r in found}
    for status, code in _STATUS_CODES.items():
        if code not in known:  # the framework's own (unknown path, wrong method, too large)
            found.append(Raised(status, code, "(the web framework's own)", "api._http_error"))
    return found


def _reach(start: set[str], functions: dict[str, _Function]) -> tuple[list[Raised], set[str]]:
    """The errors raised from ``start`` on, following calls by name; and every name called."""
    seen: set[str] = set()
    called = set(start)
    todo = sorted(start)
    raised: list[Raised] = []
    while todo:
        name = todo.pop()
        if name in seen or name not in functions:
            continue
        seen.add(name)
        raised += functions[name].raised
        called |= functions[name].calls
        todo += sorted(functions[name].calls)
    return raised, called


def engine_entries() -> dict[str, set[str]]:
    """Event class → what the engine calls for it: the bodies of its
    ``if isinstance(event, ...)`` branches (``Engine.handle`` dispatches so)."""
    tree = ast.parse((ROOT / "engine" / "engine.py").read_text(encoding="utf-8"))
    entries: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        test = node.test if isinstance(node, ast.If) else None
        if not (isinstance(test, ast.Call) and getattr(test.func, "id", "") == "isinstance"):
            continue
        if getattr(test.args[0], "id", "") != "event":
            continue
        kinds = test.args[1]
        names = [
            e.id for e in (kinds.elts if isinstance(kinds, ast.Tuple) else [kinds]) if isinstance(e, ast.Name)
        ]
        calls = {
            c.func.id if isinstance(c.func, ast.Name) else c.func.attr
            for child in node.body
            for c in ast.walk(child)
            if isinstance(c, ast.Call) and isinstance(c.func, ast.Name | ast.Attribute)
        }
        for name in names:
            entries[name] = calls
    return entries


def route_errors(endpoint_name: str) -> list[Raised]:
    """The errors a route handler can answer with: those it raises itself or through the API
    functions it calls, and the engine's refusals for the events it feeds the engine."""
    raised, called = _reach({endpoint_name}, _functions(API_MODULES))
    engine = _functions(ENGINE_MODULES)
    for event, calls in engine_entries().items():
        if event in called:  # the handler builds this event for the engine
            raised += _reach(calls, engine)[0]
    return raised


# -- rendering ---------------------------------------------------------------------


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


_BOUNDS = (
    ("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"),
    ("minLength", "length ≥"), ("maxLength", "length ≤"), ("minItems", "items ≥"), ("maxItems", "items ≤"),
)  # fmt: skip


def _schema_type(schema: dict[str, Any], components: dict[str, Any]) -> str:
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        return f"object ([{name}](#{name.lower()}))"
    if "anyOf" in schema:
        return " or ".join(_schema_type(s, components) for s in schema["anyOf"] if s.get("type") != "null")
    if "enum" in schema:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in schema["enum"])
    if "const" in schema:
        return f"`{json.dumps(schema['const'])}`"
    kind = schema.get("type", "any")
    rules = []
    for key, sign in _BOUNDS:
        if key in schema:
            rules.append(f"{sign} {schema[key]}")
    if "pattern" in schema:
        rules.append(f"matching `{schema['pattern']}`")
    text = f"array of {_schema_type(schema.get('items', {}), components)}" if kind == "array" else kind
    return text + (f" ({', '.join(rules)})" if rules else "")


def _model_section(name: str, schema: dict[str, Any], components: dict[str, Any]) -> list[str]:
    lines = [f"### {name} {{#{name.lower()}}}", ""]
    if schema.get("description"):
        lines += [_cell(schema["description"]), ""]
    required = set(schema.get("required", ()))
    lines += ["| field | type | required | default | description |", "|---|---|---|---|---|"]
    for field, prop in schema.get("properties", {}).items():
        default = (
            f"`{json.dumps(prop['default'])}`" if "default" in prop and prop["default"] is not None else ""
        )
        lines.append(
            f"| `{field}` | {_cell(_schema_type(prop, components))} | {'yes' if field in required else ''} "
            f"| {default} | {_cell(prop.get('description', ''))} |"
        )
    return [*lines, ""]


def _curl(method: str, path: str, role: str | None, body: dict[str, Any] | None) -> str:
    parts = ["curl -s"]
    if role is not None:
        parts.append('-H "Authorization: Bearer $TOKEN"')
    if method != "GET":
        parts.append(f"-X {method}")
    parts.append(f'"$XFERD{path}"')
    if body is not None:
        parts.append("-H 'Content-Type: application/json'")
        parts.append(f"-d '{json.dumps(body)}'")
    return " ".join(parts)


def _example_path(path: str) -> str:
    return (
        path.replace("{transfer_id}", "$ID")
        .replace("{op}", "complete")
        .replace("{pbx}", "globex")
        .replace("{channel_id}", "PJSIP/2005-00000114")
        .replace("{slot}", "6000")
    )


def _error_rows(rows: list[Raised]) -> list[str]:
    lines = []
    seen: set[tuple[str, str]] = set()
    for raised in sorted(rows, key=lambda r: (r.status or 409, r.code)):
        status = (
            str(raised.status)
            if raised.status is not None
            else ("404" if raised.code == "not_found" else "409")
        )
        if (status, raised.detail) in seen:
            continue
        seen.add((status, raised.detail))
        detail = "—" if raised.detail == "{…}" else _cell(raised.detail)
        lines.append(f"| {status} | `{raised.code}` | {detail} |")
    return lines


def render() -> str:
    """The control API reference page (Markdown)."""
    app = offline_app()
    schema = app.openapi()
    components = schema.get("components", {}).get("schemas", {})
    lines = [
        "# Control API reference",
        "",
        "<!-- Generated from the FastAPI app's OpenAPI schema and the API's source by docsgen/api_ref.py "
        "at every build. -->",
        "",
        f"OpenAPI {schema.get('openapi')} · API version {schema['info']['version']}. The service serves "
        "this schema at `/openapi.json` (interactive docs at `/docs`).",
        "",
        "In the examples, `XFERD` is the service's address (e.g. `http://127.0.0.1:8765`) and `TOKEN` an "
        "API token. Every route except `/healthz` and the Webex webhooks needs "
        "`Authorization: Bearer <token>` and the role shown; each role may do what the roles before it "
        "may: `viewer` < `operator` < `supervisor` < `admin`. Errors are always "
        '`{"error": "<code>", "detail": "<sentence>"}`; the codes are listed [at the end](#error-codes).',
        "",
        "A browser that logged in with `POST /console/login` sends its session cookie instead of the "
        "header (`/v1/stream` too); with the cookie, state-changing requests also need the header "
        "`X-CSRF-Token` equal to the `xferd_csrf` cookie (else 403). See "
        "[console sessions](../guides/users-and-roles.md#console-sessions).",
        "",
        'With several PBXs configured, a request names its PBX with `"pbx": "<name>"` in the body or '
        "`?pbx=<name>` on reads; with one PBX it may be left out. A transfer id names its PBX by itself.",
        "",
    ]
    for route in api_routes(app.routes):
        methods = sorted(route.methods) if isinstance(route, APIRoute) else ["WEBSOCKET"]
        for method in methods:
            lines += _route(route, method, schema, components)
    lines += ["## Schemas", ""]
    for name, component in sorted(components.items()):
        if name in ("HTTPValidationError", "ValidationError"):
            continue  # FastAPI's own; every validation error leaves as invalid_request instead
        lines += _model_section(name, component, components)
    lines += [
        "## Error codes {#error-codes}",
        "",
        "Every error code the API and the engine can answer with, the status it comes with, and the "
        "sentence the caller reads in `detail` (`{…}` is filled in).",
        "",
        "| code | meaning |",
        "|---|---|",
    ]
    errors = all_errors()
    for code in sorted({r.code for r in errors}):
        # A code with no meaning written here yet shows the sentence the code itself gives.
        meaning = MEANINGS.get(code) or next(r.detail for r in errors if r.code == code)
        lines.append(f"| `{code}` | {_cell(meaning)} |")
    lines += ["", "| status | code | detail |", "|---|---|---|", *_error_rows(errors), ""]
    return "\n".join(lines)


def _route(
    route: APIRoute | APIWebSocketRoute,
    method: str,
    schema: dict[str, Any],
    components: dict[str, Any],
) -> list[str]:
    path = route.path_format  # as the schema writes it: ``{channel_id:path}`` → ``{channel_id}``
    operation = schema["paths"].get(path, {}).get(method.lower(), {})
    role = route_role(route)
    lines = [f"## `{method} {path}`", ""]
    doc = inspect.getdoc(route.endpoint)
    if doc:
        lines += [doc, ""]
    auth = f"role `{role}`" if role else "none"
    if path.startswith("/v1/webhooks/"):
        auth = "none — each delivery is authenticated by its `X-Spark-Signature`"
    if isinstance(route, APIWebSocketRoute):
        auth = "any user's token, as a Bearer header or (for browsers) `?token=`"
    lines += [f"**Authentication:** {auth}", ""]
    params = operation.get("parameters", [])
    if isinstance(route, APIWebSocketRoute):
        params = [
            {
                "name": p.alias,
                "in": "query",
                "required": p.field_info.is_required(),
                "schema": {"type": "string"},
            }
            for p in route.dependant.query_params
        ]
    if params:
        lines += ["| parameter | in | type | required | description |", "|---|---|---|---|---|"]
        for param in params:
            kind = _cell(_schema_type(param.get("schema", {}), components))
            lines.append(
                f"| `{param['name']}` | {param['in']} | {kind} "
                f"| {'yes' if param.get('required') else ''} | {_cell(param.get('description', ''))} |"
            )
        lines.append("")
    body = operation.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema")
    if body is not None:
        lines += [f"**Body:** {_schema_type(body, components)}", ""]
    success = [code for code in operation.get("responses", {}) if code.startswith("2")]
    if success:
        lines += [f"**Success:** {', '.join(success)}", ""]
    raised = route_errors(route.endpoint.__name__)
    generic: list[Raised] = []
    if role is not None:
        generic += [
            Raised(401, "unauthorized", "send the API token as 'Authorization: Bearer <token>'", ""),
            Raised(
                403,
                "forbidden",
                "user {name} has role {role}; this request needs role " + role + " or higher",
                "",
            ),
        ]
    if body is not None:
        generic += [
            Raised(400, "invalid_json", "the request body is not valid JSON", ""),
            Raised(422, "invalid_request", "{field}: {what is wrong}", ""),
        ]
    elif params:
        generic.append(Raised(422, "invalid_request", "{parameter}: {what is wrong}", ""))
    rows = _error_rows(generic + raised)
    if rows:
        lines += ["| status | error | detail |", "|---|---|---|", *rows, ""]
    if isinstance(route, APIRoute):
        example = EXAMPLE_BODIES.get((method, path)) if body is not None else None
        auth_role = None if path.startswith("/v1/webhooks") else role
        lines += ["```sh", _curl(method, _example_path(path), auth_role, example), "```", ""]
    return lines
