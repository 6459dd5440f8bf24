"""The console's static files as the service serves them (no browser needed): the page and its
modules under ``/console/``, a strict Content-Security-Policy, nothing outside the folder, and the
session routes (``/console/login``…) not shadowed by the files."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from adapters.service.config import ApiConfig, Config, StoreConfig, YeastarPbx
from adapters.service.console_static import CONSOLE_DIR
from adapters.service.server import Service
from tests.service.conftest import FakeAdapter


@pytest.fixture
async def http(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    config = Config(
        pbx=YeastarPbx(kind="yeastar", base_url="http://127.0.0.1:9", client_id="i",
                       client_secret=SecretStr("s")),
        api=ApiConfig(listen="127.0.0.1:0", token=SecretStr("static-test-token-0123")),
        store=StoreConfig(path=tmp_path / "s.db"),
    )  # fmt: skip
    service = Service(config, adapter=FakeAdapter())
    await service.start()
    async with httpx.AsyncClient(base_url=service.base_url, timeout=5) as client:
        yield client
    await service.stop()


async def test_page_is_served_with_a_strict_policy(http: httpx.AsyncClient) -> None:
    redirect = await http.get("/console")
    assert (redirect.status_code, redirect.headers["location"]) == (308, "/console/")
    page = await http.get("/console/")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    assert '<script type="module" src="static/app.js">' in page.text


async def test_every_module_the_page_loads_is_served_as_javascript(http: httpx.AsyncClient) -> None:
    modules = sorted(path.name for path in (CONSOLE_DIR / "static").glob("*.js"))
    assert "app.js" in modules
    for name in modules:
        answer = await http.get(f"/console/static/{name}")
        assert answer.status_code == 200, name
        assert "javascript" in answer.headers["content-type"], name
        assert answer.headers["x-content-type-options"] == "nosniff"
    css = await http.get("/console/static/console.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")


async def test_nothing_outside_the_folder_and_no_inner_html(http: httpx.AsyncClient) -> None:
    for path in (
        "/console/static/../../api.py",
        "/console/static/%2e%2e/%2e%2e/api.py",
        "/console/static/nope.js",
    ):
        answer = await http.get(path)
        assert answer.status_code == 404, path
    # Data reaches the page as text only (the CSP is the second wall, not the first).
    for path in (CONSOLE_DIR / "static").glob("*.js"):
        source = path.read_text()
        assert "innerHTML" not in source and "insertAdjacentHTML" not in source, path.name
        assert "document.write" not in source and "eval(" not in source, path.name


async def test_session_routes_are_not_shadowed(http: httpx.AsyncClient) -> None:
    me = await http.get("/console/me")
    assert me.status_code == 401
    login = await http.post("/console/login", json={"token": "wrong"})
    assert login.status_code == 401
