"""The supervisor console's static files, served at ``/console/`` by the service itself.

Theory of operation
-------------------
The console is a single page (``console/index.html``) plus plain ES modules
and a style sheet under ``console/static/``: no build step, no CDN, nothing
fetched from the internet, so it works on an isolated network and ships as
package data in the wheel.  The page holds no secret and no private back
door: it logs in through ``POST /console/login`` (:mod:`adapters.service.api_console`),
then reads ``/v1/stream?snapshot=1`` and acts only through the control API
with the session cookie and the ``X-CSRF-Token`` header, so every role check
and every audit entry is the API's.

This module only serves files.  ``/console`` redirects to ``/console/`` so
the page's relative URLs resolve; ``/console/static/`` is a
:class:`~starlette.staticfiles.StaticFiles` mount, deliberately under its own
prefix so it never shadows the session routes (``/console/login``,
``/console/logout``, ``/console/me``).  The page is sent with a strict
Content-Security-Policy (scripts and styles from this origin only, no inline
script, no framing): the page renders every value from the PBX as text, and
the policy is the second wall should that ever slip.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse, RedirectResponse
from starlette.requests import Request
from starlette.staticfiles import StaticFiles
from starlette.types import Message, Receive, Scope, Send

#: The console's files (package data: see ``[tool.setuptools.package-data]``).
CONSOLE_DIR = Path(__file__).with_name("console")

#: No inline script, no foreign origin, no framing (clickjacking of the action buttons).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def mount(app: FastAPI) -> None:
    """Serve the console on ``app``: ``GET /console/`` and ``/console/static/*``.

    Plain Starlette routes, not API routes: the page is not part of the control API (it is
    in neither the OpenAPI schema nor the API reference, and needs no credential to load —
    it holds none).
    """

    async def console_redirect(request: Request) -> RedirectResponse:
        return RedirectResponse("/console/", status_code=308)

    async def console_page(request: Request) -> FileResponse:
        """The console's single page (login view and live view)."""
        return FileResponse(CONSOLE_DIR / "index.html", media_type="text/html", headers=_PAGE_HEADERS)

    app.add_route("/console", console_redirect, methods=["GET"], include_in_schema=False)
    app.add_route("/console/", console_page, methods=["GET"], include_in_schema=False)
    # ``no-cache``: revalidate every load (an upgraded service must not run yesterday's script).
    static = StaticFiles(directory=CONSOLE_DIR / "static", check_dir=False)
    app.mount("/console/static", _NoCache(static), name="console-static")


class _NoCache:
    """ASGI wrapper adding ``Cache-Control: no-cache`` and ``nosniff`` to the static answers."""

    def __init__(self, app: StaticFiles) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"cache-control", b"no-cache"))
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sending)
