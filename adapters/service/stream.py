"""The live stream's parts that the ``/v1/stream`` route (in :mod:`adapters.service.api`) uses:
the first message of ``?snapshot=1``, sending a subscription's batches, the Origin check of a
stream opened with the console's session cookie.  The fan-out itself is :mod:`adapters.service.hub`.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, WebSocket
from starlette.requests import HTTPConnection

from adapters.service.hub import Subscription
from adapters.service.stream_writer import RawWriter

if TYPE_CHECKING:
    from adapters.service.api import ApiContext

#: Finished transfers (per PBX, newest first) in a stream snapshot: the console's history.
RECENT_IN_SNAPSHOT = 100
#: Calls encoded between two yields to the loop while a snapshot is built.
SNAPSHOT_SLICE = 200


async def health(app: FastAPI) -> dict[str, Any]:
    """What ``GET /healthz`` answers now (the snapshot's ``health``: the same body, by construction)."""
    for route in app.router.routes:
        if getattr(route, "path", None) == "/healthz":
            response = await route.endpoint()  # type: ignore[attr-defined]
            body: dict[str, Any] = json.loads(response.body)
            return body
    return {}


async def stream_snapshot(ctx: ApiContext, app: FastAPI, pbx: str | None) -> str:
    """The stream's first message with ``?snapshot=1``: every live transfer and call, the
    recently finished transfers, and health.

    Called after subscribing: every change from then on is queued for the client too, so the
    snapshot may be encoded in slices, letting the loop run between them (a thousand calls
    for each of fifty reconnecting browsers must not stall the feed); a change that lands
    between slices is in the snapshot or in the queue, or both (harmless: the later wins).
    """
    runtimes = ctx.runtimes(pbx)
    transfers = [t for runtime in runtimes for t in runtime.live_transfers()]
    live = {t["id"] for t in transfers}
    transfers += [
        dict(t) for r in runtimes for t in r.recent_finished()[:RECENT_IN_SNAPSHOT] if t["id"] not in live
    ]
    dumps = json.JSONEncoder(separators=(",", ":"), default=str).encode
    parts = [dumps(t) for t in transfers]
    await asyncio.sleep(0)
    calls: list[str] = []
    for runtime in runtimes:
        views = runtime.calls()
        for start in range(0, len(views), SNAPSHOT_SLICE):
            calls += [dumps(call) for call in views[start : start + SNAPSHOT_SLICE]]
            await asyncio.sleep(0)
    return (
        f'{{"kind":"snapshot","transfers":[{",".join(parts)}],"calls":[{",".join(calls)}],'
        f'"health":{dumps(await health(app))}}}'
    )


async def send_batches(websocket: WebSocket, subscription: Subscription) -> None:
    """Send the subscription's batches until it ends: each wake-up's frames in one write where the
    server allows it (:mod:`adapters.service.stream_writer`), else message by message."""
    raw = RawWriter.find(websocket)
    while (batches := await subscription.batches()) is not None:
        if raw is not None:
            await raw.write(b"".join(batch.frames for batch in batches))
            continue
        for n, message in enumerate((text for batch in batches for text in batch.texts), 1):
            await websocket.send_text(message)
            if n % 64 == 0:
                await asyncio.sleep(0)  # a long batch must not hold the loop: frames wait


def same_origin(connection: HTTPConnection) -> bool:
    """A websocket opened with the session cookie must come from a page of this service
    (browsers send ``Origin``; cookies alone would let any site's script open the stream)."""
    origin = connection.headers.get("origin")
    if origin is None:
        return True  # not a browser
    hosts = {connection.headers.get("host", ""), connection.headers.get("x-forwarded-host", "")}
    return origin.partition("://")[2].rstrip("/") in hosts - {""}
