"""The promise, checked after every run against the simulator's own truth.

The service's answers are not evidence about themselves: every check below
reads the simulator (its live legs, its request log) and compares it with
the transfer's final resource.  A violation is a sentence naming the
transfer and what is wrong, so a failing run says what to look at.

What "consistent with the simulator's truth" means (Yeastar):

* ``completed`` — the transferor has left; if the transferee is still on
  the line it is in the same call as a target leg and not on hold.
* ``aborted`` — no target leg of any attempt is left (except after the
  transferee hung up: the transferor may go on talking with the target, as
  Asterisk leaves them); the transferee, if still on the line, is not on
  hold and is back in the transferor's call; reason ``lost`` needs every
  leg of the transfer gone.

Webex: ``completed`` — both of the user's calls ended by one
``transfer(callId1, callId2)``; ``aborted`` — the consult call ended and
the original call is not left on hold.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adapters.webex import WebexSimulator
from adapters.yeastar.simulator import SimRequest
from chaos.support import Leg

#: Yeastar endpoints that act on legs (queries and tokens do not).
ACTING = frozenset({"call/transfer", "call/hangup", "call/hold", "call/unhold", "call/dial"})
#: Time the final state's stamp may trail a request arriving just before it (clock reads).
EPSILON_S = 0.0005


@dataclass(slots=True)
class Verdict:
    """What one run did to the promise.  Empty lists mean it held."""

    lost: list[str] = field(default_factory=list)
    wrong_outcome: list[str] = field(default_factory=list)
    duplicate_completes: list[str] = field(default_factory=list)
    after_final: list[str] = field(default_factory=list)
    crashes: list[str] = field(default_factory=list)
    leaks: list[str] = field(default_factory=list)

    def ok(self) -> bool:
        return not (
            self.lost
            or self.wrong_outcome
            or self.duplicate_completes
            or self.after_final
            or self.crashes
            or self.leaks
        )

    def problems(self) -> list[str]:
        return [
            *self.lost,
            *self.wrong_outcome,
            *self.duplicate_completes,
            *self.after_final,
            *self.crashes,
            *self.leaks,
        ]


def yeastar_requests(requests: Iterable[SimRequest], channels: set[str]) -> list[SimRequest]:
    """The acting requests that name one of ``channels`` (the transfer's legs)."""
    return [r for r in requests if r.endpoint in ACTING and r.body.get("channel_id") in channels]


def check_yeastar(
    verdict: Verdict,
    resource: Mapping[str, Any] | None,
    *,
    transferor: str,
    transferee: str,
    numbers: list[str],
    legs: Mapping[str, Leg],
    requests: list[SimRequest],
    final_time: float | None,
) -> None:
    """Add every violation of this Yeastar run to ``verdict``."""
    tid = resource["id"] if resource else "?"
    if resource is None or resource["state"] not in ("completed", "aborted"):
        state = resource["state"] if resource else "missing"
        verdict.lost.append(f"transfer {tid}: not final ({state}) when the run ended")
        return
    state, reason = resource["state"], resource["reason"]
    tor, tee = legs.get(transferor), legs.get(transferee)
    targets = [
        leg
        for leg in legs.values()
        if leg.number in numbers and leg.channel_id not in (transferor, transferee)
    ]
    wrong = verdict.wrong_outcome
    if state == "completed":
        if tor is not None:
            wrong.append(
                f"transfer {tid}: completed ({reason}) but the transferor is still on ({tor.status})"
            )
        if tee is not None:
            if tee.status == "HOLD":
                wrong.append(f"transfer {tid}: completed but the transferee is left on hold")
            if not any(leg.call_id == tee.call_id for leg in targets):
                wrong.append(f"transfer {tid}: completed but the transferee is with no target leg")
    else:
        if reason == "lost":
            still = [leg for leg in (tor, tee, *targets) if leg is not None]
            if still:
                wrong.append(f"transfer {tid}: aborted (lost) but legs are still up: {_show(still)}")
        elif reason == "transferee_hangup":
            held = [
                leg for leg in targets if leg.status == "HOLD" or tor is None or leg.call_id != tor.call_id
            ]
            if held:
                wrong.append(
                    f"transfer {tid}: aborted (transferee_hangup) but target legs left: {_show(held)}"
                )
        elif targets:
            wrong.append(f"transfer {tid}: aborted ({reason}) but target legs are still up: {_show(targets)}")
        if tee is not None:
            if tee.status == "HOLD":
                wrong.append(f"transfer {tid}: aborted ({reason}) but the transferee is left on hold")
            elif tor is not None and tor.call_id != tee.call_id:
                wrong.append(
                    f"transfer {tid}: aborted ({reason}) but the transferee is not back with the transferor"
                )
    # The PBX's own log: completes that reached it, and anything after the final state.
    completes = [
        r
        for r in requests
        if r.endpoint == "call/transfer"
        and r.body.get("channel_id") == transferor
        and r.body.get("attended_operate") == "complete"
        and (r.answer or {}).get("errcode") != 10004  # refused before acting: a safe resend
    ]
    if len(completes) > 1:
        verdict.duplicate_completes.append(
            f"transfer {tid}: {len(completes)} complete requests reached the PBX"
        )
    if state != "completed" and any((r.answer or {}).get("errcode") == 0 for r in completes):
        verdict.wrong_outcome.append(
            f"transfer {tid}: {state} ({reason}) but the PBX carried out its complete"
        )
    if final_time is not None:
        channels = {transferor, transferee, *(leg.channel_id for leg in targets)}
        if resource.get("target", {}).get("channel_id"):
            channels.add(resource["target"]["channel_id"])
        late = [r for r in yeastar_requests(requests, channels) if r.at > final_time + EPSILON_S]
        for r in late:
            verdict.after_final.append(
                f"transfer {tid}: {r.endpoint} {r.body} reached the PBX "
                f"{r.at - final_time:.3f} s after {state}"
            )


def check_webex(
    verdict: Verdict,
    resource: Mapping[str, Any] | None,
    *,
    sim: WebexSimulator,
    original: str,
    numbers: list[str],
    final_time: float | None,
    wall_minus_monotonic: float,
    token_valid: bool = True,
) -> None:
    """Add every violation of this Webex run to ``verdict``.

    ``token_valid`` False: the token was refused during the run, so the
    service could not act on the calls any more; the legs are then not
    held against it (nothing could have put them right), the rest is.
    """
    tid = resource["id"] if resource else "?"
    if resource is None or resource["state"] not in ("completed", "aborted"):
        state = resource["state"] if resource else "missing"
        verdict.lost.append(f"transfer {tid}: not final ({state}) when the run ended")
        return
    state, reason = resource["state"], resource["reason"]
    first = sim.call(original)
    consults = [
        c for c in sim._calls.values() if c.personality == "clickToDial" and c.remote_number in numbers
    ]
    mine = {original, *(c.id for c in consults)}
    # A 4xx means Webex refused before acting (a 429 retried is a safe resend); 2xx and 5xx may have acted.
    transfers = [
        r
        for r in sim.requests
        if r.path.endswith("/telephony/calls/transfer")
        and (r.body or {}).get("callId1") == original
        and not 400 <= r.status < 500
    ]
    if len(transfers) > 1:
        verdict.duplicate_completes.append(
            f"transfer {tid}: {len(transfers)} transfer requests reached Webex"
        )
    if state != "completed" and any(r.status < 300 for r in transfers):
        verdict.wrong_outcome.append(
            f"transfer {tid}: {state} ({reason}) but Webex carried out its transfer request"
        )
    if token_valid:
        wrong = verdict.wrong_outcome
        live = [c for c in consults if c.state != "disconnected"]
        if state == "completed":
            if first is not None and first.state != "disconnected":
                wrong.append(f"transfer {tid}: completed but the original call is still {first.state}")
            if live:
                wrong.append(f"transfer {tid}: completed but consult calls are still up")
        else:
            if live:
                wrong.append(f"transfer {tid}: aborted ({reason}) but consult calls are still up")
            if first is not None and first.state == "held":
                wrong.append(f"transfer {tid}: aborted ({reason}) but the original call is left on hold")
    if final_time is not None:
        for r in sim.requests:
            body = r.body or {}
            named = {body.get("callId"), body.get("callId1"), body.get("callId2")}
            if r.method == "POST" and named & mine and r.at + wall_minus_monotonic > final_time + 0.005:
                verdict.after_final.append(
                    f"transfer {tid}: POST {r.path} {body} reached Webex "
                    f"{r.at + wall_minus_monotonic - final_time:.3f} s after {state}"
                )


def _show(legs: Iterable[Leg]) -> str:
    return ", ".join(f"{leg.number}:{leg.status}" for leg in legs)
