"""Routing rules over the control API: read them with their counters, reload the file.

``GET /v1/rules`` needs role ``viewer``; ``POST /v1/rules/reload`` ``admin``
(it changes what the service does by itself).  A reload that finds a bad file
answers 422 with the file's one-line problem and keeps the rules it had, as
SIGHUP does (:mod:`adapters.service.rules`).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from adapters.service.api import ApiContext, ApiError
from adapters.service.audit import note
from adapters.service.rules import RulesError
from engine.transfer import iso


def routes(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    viewer = [ctx.requires("viewer")]
    admin = [ctx.requires("admin")]

    def holder() -> Any:
        rules = ctx.service.rules
        if rules is None:
            raise ApiError(
                409, "no_rules", "this service runs without a rules file: set [rules] path in the config"
            )
        return rules

    def body(rules: Any) -> dict[str, Any]:
        return {
            "path": str(rules.path),
            "loaded_at": iso(rules.loaded_at),
            "reloads": rules.reloads,
            "last_error": rules.last_error,
            "max_auto_transfers": rules.ruleset.max_auto_transfers,
            "calendars": sorted(rules.ruleset.calendars),
            "rules": rules.describe(ctx.service),
        }

    @router.get("/v1/rules", dependencies=viewer)
    async def list_rules() -> dict[str, Any]:
        """The rules in evaluation order, each with its counters (summed over the PBXs)."""
        return body(holder())

    @router.post("/v1/rules/reload", dependencies=admin)
    async def reload_rules(request: Request) -> dict[str, Any]:
        note(request, action="rules.reload")
        rules = holder()
        try:
            rules.reload(ctx.service)
        except RulesError as exc:
            raise ApiError(
                422, "invalid_rules", f"{exc}; the rules loaded before are still in force"
            ) from None
        return body(rules)

    return router
