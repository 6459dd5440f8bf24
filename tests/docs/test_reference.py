"""The documentation matches the code: every config key, route and metric it should name.

The reference pages are generated from the code (``docsgen/``); these tests
check the generators against an independent reading of the code, and the
hand-written pages' examples against what the code accepts.
"""

from __future__ import annotations

import re
import tomllib
import typing
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from adapters.service import config as cfg
from adapters.service.rules import RulesFile
from adapters.service.sessions import CSRF_COOKIE, SESSION_COOKIE
from docsgen import api_ref, config_ref, logs_ref, metrics_ref

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted((ROOT / "docs").rglob("*.md"))
#: TOML files the docs include or point to.
EXAMPLES = [*sorted((ROOT / "examples").glob("*.toml")), ROOT / "deploy" / "xferd.toml"]
TOML_BLOCK = re.compile(r"^( *)```toml\n(.*?)^\1```", re.MULTILINE | re.DOTALL)


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models in a field's type, found without docsgen's helper."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models(arg)]


def _every_key(root: type[BaseModel]) -> set[tuple[type[BaseModel], str]]:
    """(model, key) for every key of every table reachable from ``root``, as the file writes it."""
    seen: set[type[BaseModel]] = set()
    todo: list[type[BaseModel]] = [root]
    keys: set[tuple[type[BaseModel], str]] = set()
    while todo:
        model = todo.pop()
        if model in seen:
            continue
        seen.add(model)
        for name, info in model.model_fields.items():
            keys.add((model, info.alias or name))
            todo += _models(info.annotation)
    return keys


@pytest.mark.parametrize(
    ("root", "render"),
    [(cfg.Config, config_ref.render), (RulesFile, config_ref.render_rules)],
    ids=["config", "rules"],
)
def test_every_config_key_in_the_code_is_in_the_generated_reference(
    root: type[BaseModel], render: Any
) -> None:
    page = render()
    tables = {table.model: table for table in config_ref.tables(root)}
    expected = {config_ref.anchor(tables[model], key) for model, key in _every_key(root)}
    assert len(expected) == len(_every_key(root))  # one anchor per key: none shadows another
    documented = config_ref.documented_keys(page)
    assert expected - documented == set(), "keys missing from the reference"
    assert documented - expected == set(), "the reference names keys the code does not have"


def test_every_secret_environment_variable_is_in_the_reference() -> None:
    page = config_ref.render()
    for variable in cfg.SECRET_ENV:
        assert f"`{variable}`" in page
    for key in cfg.PBX_SECRET_KEYS:
        assert f"`{cfg.pbx_env_name('acme', key)}`" in page


def test_reference_shows_defaults_and_rules_as_the_code_has_them() -> None:
    page = config_ref.render()
    row = next(line for line in page.splitlines() if 'id="policy.no_answer_timeout_s"' in line)
    assert "number (> 0)" in row and "`20.0`" in row
    row = next(line for line in page.splitlines() if 'id="pbx-webex.poll_interval_s"' in line)
    assert "At least 0.1 seconds" in row


def _toml_blocks() -> list[tuple[str, str]]:
    found = [(f"{path.relative_to(ROOT)}", path.read_text(encoding="utf-8")) for path in EXAMPLES]
    for path in [*PAGES, ROOT / "README.md"]:
        for match in TOML_BLOCK.finditer(path.read_text(encoding="utf-8")):
            indent = len(match.group(1))
            body = "\n".join(line[indent:] for line in match.group(2).splitlines())
            if not body.lstrip().startswith("--8<--"):  # an included file: checked as EXAMPLES
                found.append((f"{path.relative_to(ROOT)}:{match.start()}", body))
    return found


def _tags(model: type[BaseModel]) -> tuple[Any, ...]:
    """The values a union member's ``kind`` tag takes (none: any entry may be this model)."""
    kind = model.model_fields.get("kind")
    return typing.get_args(kind.annotation) if kind is not None else (None,)


def _unknown_keys(data: dict[str, Any], model: type[BaseModel], where: str) -> list[str]:
    """Keys in ``data`` that ``model`` (or, for a union, the member its tag names) does not have."""
    problems = []
    fields = {info.alias or name: info for name, info in model.model_fields.items()}
    for key, value in data.items():
        info = fields.get(key)
        if info is None:
            problems.append(f"{where}.{key}")
            continue
        children = _models(info.annotation)
        for item in value if isinstance(value, list) else [value]:
            if not (children and isinstance(item, dict)):
                continue
            candidates = [m for m in children if item.get("kind") in (None, *_tags(m))] or children
            if all(_unknown_keys(item, child, f"{where}.{key}") for child in candidates):
                problems += _unknown_keys(item, candidates[0], f"{where}.{key}")
    return problems


@pytest.mark.parametrize(("where", "body"), _toml_blocks(), ids=[w for w, _ in _toml_blocks()])
def test_every_toml_example_uses_only_keys_the_code_knows(where: str, body: str) -> None:
    data = tomllib.loads(body)
    # A rules file has [[rules]] / [[calendars]] arrays; a config file has tables.
    is_rules = isinstance(data.get("rules"), list) or "calendars" in data
    assert _unknown_keys(data, RulesFile if is_rules else cfg.Config, "") == []


def test_the_deploy_config_loads(tmp_path: Path) -> None:
    env = {"XFERD_API_TOKEN": "t" * 32, "XFERD_PBX_CLIENT_SECRET": "s" * 16}
    config = cfg.load(ROOT / "deploy" / "xferd.toml", env)
    assert config.store.path == Path("/var/lib/xferd/xferd.sqlite3")


def test_every_metric_the_docs_name_exists() -> None:
    exported = {name for name, *_ in metrics_ref.families()}
    suffixes = ("_bucket", "_sum", "_count", "_created")
    texts = [path.read_text(encoding="utf-8") for path in [*PAGES, ROOT / "README.md"]]
    named = {name for text in texts for name in re.findall(r"\bxferd_[a-z_]+", text)}
    named -= {SESSION_COOKIE, CSRF_COOKIE}  # the console's cookies, not metrics
    unknown = {
        n for n in named if n not in exported and not any(n.removesuffix(s) in exported for s in suffixes)
    }
    assert unknown == set()


def test_metrics_reference_lists_every_metric_of_the_registry() -> None:
    table = metrics_ref.render_table()
    families = metrics_ref.families()
    assert len(families) >= 10
    for name, kind, _, labels in families:
        row = next(line for line in table.splitlines() if f"`{name}`" in line)
        assert f"| {kind} |" in row
        assert all(f"`{label}`" in row for label in labels)


def test_api_reference_lists_every_route_with_its_role() -> None:
    app = api_ref.offline_app()
    page = api_ref.render()
    for path, methods in app.openapi()["paths"].items():
        for method in methods:
            assert f"## `{method.upper()} {path}`" in page
    assert "## `WEBSOCKET /v1/stream`" in page
    roles = {
        (method, route.path): api_ref.route_role(route)
        for route in api_ref.api_routes(app.routes)
        for method in getattr(route, "methods", None) or ["WEBSOCKET"]
    }
    assert roles[("POST", "/v1/transfers")] == "operator"
    assert roles[("GET", "/v1/transfers")] == "viewer"
    assert roles[("GET", "/v1/audit")] == "supervisor"
    public = {"/healthz", "/v1/stream", "/v1/webhooks/webex", "/v1/webhooks/webex/{pbx}"}
    public |= {"/console/login", "/console/logout", "/console/me"}  # the console's own session
    assert {path for (_, path), role in roles.items() if role is None} == public
    page_roles = re.findall(r"## `(\S+) (\S+)`\n\n(?:.*\n\n)?\*\*Authentication:\*\* role `(\w+)`", page)
    assert ("POST", "/v1/transfers", "operator") in page_roles


def test_api_reference_names_the_errors_a_route_can_answer() -> None:
    page = api_ref.render()
    start = page.split("## `POST /v1/transfers`")[1].split("\n## ")[0]
    for code in ("transfer_in_progress", "no_active_call", "ambiguous", "pbx_error", "pbx_unavailable"):
        assert f"`{code}`" in start
    assert "`not_allowed`" not in start  # an operate-only refusal
    operate = page.split("## `POST /v1/transfers/{transfer_id}/{op}`")[1].split("\n## ")[0]
    assert "`not_allowed`" in operate and "`ambiguous`" not in operate
    park = page.split("## `POST /v1/calls/{channel_id}/park`")[1].split("\n## ")[0]
    assert "**Authentication:** role `supervisor`" in park
    for code in ("transfer_in_progress", "not_found", "pbx_error", "pbx_unavailable", "not_allowed"):
        assert f"`{code}`" in park, code
    hangup = page.split("## `POST /v1/calls/{channel_id}/hangup`")[1].split("\n## ")[0]
    assert "hangup is not allowed" in hangup  # the transfer's refusal while a request is in flight


def test_api_example_bodies_are_valid_requests() -> None:
    from adapters.service import api_calls
    from adapters.service.api_transfers import TransferCreate

    models: dict[tuple[str, str], type[BaseModel]] = {
        ("POST", "/v1/transfers"): TransferCreate,
        ("POST", "/v1/calls/{channel_id}/monitor"): api_calls.MonitorBody,
        ("POST", "/v1/calls/monitor"): api_calls.MonitorPartyBody,
        ("POST", "/v1/calls/park"): api_calls.ParkPartyBody,
        ("POST", "/v1/calls/hangup"): api_calls.HangupPartyBody,
        ("POST", "/v1/parked/{slot}/retrieve"): api_calls.RetrieveBody,
    }
    assert set(api_ref.EXAMPLE_BODIES) <= set(models)
    for key, body in api_ref.EXAMPLE_BODIES.items():
        models[key].model_validate(body)


def test_log_reference_finds_the_service_events() -> None:
    events = {event.event: event for event in logs_ref.events()}
    assert set(events["transfer_changed"].fields) >= {"transfer_id", "state", "reason"}
    assert events["pbx_request"].module == "xferd.pbx"
    assert not any(e.module.endswith("simulator") for e in events.values())


def test_user_facing_docs_link_only_to_files_in_the_repository() -> None:
    link = re.compile(r"\]\(([^)\s]+)\)")
    for path in [ROOT / "README.md", ROOT / "CHANGELOG.md", *PAGES]:
        for target in link.findall(path.read_text(encoding="utf-8")):
            assert not target.startswith(("http://", "https://", "/")), f"{path.name}: {target}"
            if path.name in ("README.md", "CHANGELOG.md"):  # the site's own links are checked by mkdocs
                file = target.split("#", 1)[0]
                assert not file or (ROOT / file).exists(), f"{path.name} links to missing {target}"
