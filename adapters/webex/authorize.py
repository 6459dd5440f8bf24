"""``xferd webex authorize``: the one-time authorization-code flow of an integration.

A long-running xferd needs the refresh token of an integration the Webex
user authorized (:mod:`adapters.webex.oauth`).  Getting one takes a browser
once: the user opens Webex's consent page, signs in, accepts, and Webex
redirects the browser to the integration's redirect URI with a code, which
is exchanged for the tokens.  This module runs that flow from the command
line: it listens on a loopback redirect URI (``http://127.0.0.1:<port>/callback``,
which must be one of the integration's redirect URIs), prints the consent
URL, waits for the code (checking the ``state`` it sent, so another page
cannot inject a code), exchanges it, and saves the tokens in the credential
store the service reads at start — and while running, so a service whose
refresh token was revoked recovers without a restart.

Nothing secret is printed: the URL carries only the client id, the redirect
URI, the scopes and a random ``state``.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse
from starlette.routing import Route

from adapters.base import CredentialStore
from adapters.webex.oauth import SCOPES, Grant, TokenEndpoint, authorize_url, token_url
from adapters.webex.simulator import LoopbackServer

CALLBACK_PATH = "/callback"
_PAGE = "<!doctype html><title>xferd</title><p>{}</p>"


class AuthorizationFailed(Exception):
    """The flow did not yield tokens; ``str()`` says why (never a secret)."""


@dataclass(frozen=True, slots=True)
class Integration:
    """The integration being authorized, and the Webex API it lives on."""

    base_url: str
    client_id: str
    client_secret: str

    def consent_url(self, redirect_uri: str, state: str) -> str:
        query = {
            "client_id": self.client_id,
            "response_type": "code",
            "redirect_uri": redirect_uri,
            "scope": " ".join(SCOPES),
            "state": state,
        }
        return f"{authorize_url(self.base_url)}?{urlencode(query)}"


async def authorize(
    integration: Integration,
    store: CredentialStore,
    *,
    seed: str | None,
    port: int,
    out: TextIO,
    timeout_s: float = 600.0,
) -> Grant:
    """Run the flow; save and return the tokens.  ``seed``: the fingerprint of
    the refresh token in the config, if any (the stored one supersedes it)."""
    state = secrets.token_urlsafe(24)
    code: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def callback(request: Request) -> HTMLResponse:
        params = request.query_params
        if params.get("state") != state:
            return HTMLResponse(
                _PAGE.format("Unexpected request: this page waits for Webex's redirect."), 400
            )
        if not code.done():
            given = params.get("code")
            if given:
                code.set_result(given)
            else:
                reason = params.get("error_description") or params.get("error") or "no code in the redirect"
                code.set_exception(AuthorizationFailed(f"Webex did not authorize xferd: {reason[:200]}"))
        return HTMLResponse(_PAGE.format("xferd received the authorization; you can close this page."))

    server = LoopbackServer(Starlette(routes=[Route(CALLBACK_PATH, callback, methods=["GET"])]), port)
    try:
        await server.start()
    except (OSError, SystemExit) as exc:  # uvicorn exits when it cannot bind
        raise AuthorizationFailed(f"cannot listen on 127.0.0.1:{port} for the redirect ({exc})") from None
    redirect_uri = f"http://127.0.0.1:{server.port}{CALLBACK_PATH}"
    try:
        out.write(
            "Open this URL in a browser, sign in as the Webex user xferd acts for, and accept:\n"
            f"  {integration.consent_url(redirect_uri, state)}\n"
            f"(the integration's redirect URIs must include {redirect_uri})\n"
        )
        out.flush()
        try:
            async with asyncio.timeout(timeout_s):
                received = await code
        except TimeoutError:
            raise AuthorizationFailed(f"no redirect came back within {timeout_s:g} s") from None
    finally:
        await server.stop()
    endpoint = TokenEndpoint(
        token_url(integration.base_url), integration.client_id, integration.client_secret
    )
    try:
        grant = await endpoint.exchange_code(received, redirect_uri)
    except Exception as exc:  # TokenRefused / TokenUnavailable: both say why, without secrets
        raise AuthorizationFailed(f"Webex refused the code: {exc}") from None
    finally:
        await endpoint.aclose()
    await store.save(grant.stored(seed))
    return grant
