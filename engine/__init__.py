"""xferd's pure transfer engine: events in, commands out (no I/O, no clock).

See :mod:`engine.chart` for the theory of operation and the state × stimulus
table, :mod:`engine.model` for the vocabulary.
"""

from engine.chart import FINAL_STATES, STATES, STIMULI, TABLE, TransferChart
from engine.engine import Engine, numbers_match
from engine.errors import Rejected
from engine.model import (
    CallChanged,
    CallEnded,
    CallFailed,
    CallsSnapshot,
    CallState,
    CallUpdated,
    CancelTimer,
    Command,
    Event,
    Member,
    OperatorRequested,
    PbxRequest,
    Policy,
    QueryCalls,
    RequestFinished,
    StartTimer,
    TimerFired,
    TransferChanged,
    TransferRequested,
)
from engine.registry import CallRegistry

__all__ = [
    "FINAL_STATES",
    "STATES",
    "STIMULI",
    "TABLE",
    "CallChanged",
    "CallEnded",
    "CallFailed",
    "CallRegistry",
    "CallState",
    "CallUpdated",
    "CallsSnapshot",
    "CancelTimer",
    "Command",
    "Engine",
    "Event",
    "Member",
    "OperatorRequested",
    "PbxRequest",
    "Policy",
    "QueryCalls",
    "Rejected",
    "RequestFinished",
    "StartTimer",
    "TimerFired",
    "TransferChanged",
    "TransferChart",
    "TransferRequested",
    "numbers_match",
]
