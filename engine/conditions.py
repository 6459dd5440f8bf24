"""Rule conditions: CEL expressions over the facts of a call, checked once, evaluated cheaply.

Theory of operation
-------------------
A rule's ``if`` is a `CEL <https://cel.dev>`_ expression (the language of
Kubernetes and Envoy policies: no loops, no side effects, linear time),
compiled by ``common-expression-language`` (a Rust core).  It reads a fixed
set of *facts*, named by root and field (:data:`FACTS`): ``leg`` (the leg
whose change triggered the rule), ``call`` (its call), ``now`` (the event
time in the rule's zone), ``calendars`` (each calendar's status),
``transfer`` (the transfer that ended, on ``transfer.ended`` only) and
``trigger``.

Checked once, when the rules file is loaded (:func:`compile_condition`):

1. **Syntax** — the CEL parser; its line and column are kept.
2. **Names** — every ``root.field`` chain is read from the expression's
   tokens and checked against :data:`FACTS` (and the calendars the file
   declares, and what the rule's trigger provides): an unknown name is an
   error at its own line and column, not a surprise at 3 a.m.
3. **Types** — the expression is evaluated against sample facts of the
   right types (every field set), and so is each operand of its top-level
   ``&&`` / ``||`` chains (so a short-circuit cannot hide an operand):
   an operation CEL has no overload for (``now.hour > "9"``), or a result
   that is not true/false, is an error.  Type errors hidden deeper (inside a
   ternary's branch, a macro's body) are caught at run time instead: counted
   on the rule, which is skipped, never a crash.

Evaluated cheaply: turning Python values into CEL values costs far more than
evaluating (≈2 µs per string here, 0.4 µs per evaluation), so the caller
builds one evaluation context per trigger holding only the fields the
candidate rules read (:attr:`Condition.fields`) and every candidate runs
against it.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import cel

#: Triggers a rule may name in ``on``.
TRIGGERS: tuple[str, ...] = ("call.answered", "call.ringing", "call.held", "transfer.ended")

#: The facts a condition (and a number template) may read: root → field → CEL type.
#: ``calendars`` has one ``string`` field per declared calendar; ``trigger`` is a plain string.
FACTS: dict[str, dict[str, str]] = {
    "leg": {
        "kind": "string",  # extension | inbound | outbound
        "number": "string",
        "status": "string",
        "old_status": "string",  # "" when first seen
        "channel": "string",
    },
    "call": {
        "id": "string",
        "caller": "string",
        "called": "string",
        "trunk": "string",
        "direction": "string",  # inbound | outbound | internal
        "answered_by": "string",  # the extension that answered (the leg's number on call.answered)
        "extensions": "list",  # numbers of the extension legs
        "members": "list",  # [{kind, number, status, channel}]
        "up_s": "int",  # whole seconds since the call's first leg appeared
        "transfers": "list",  # [{id, number, type, from, initiated_by, state, reason}]
        "auto_transfers": "int",  # transfers rules started on this call
    },
    "now": {
        "weekday": "int",  # 1 = Monday … 7 = Sunday (ISO)
        "day": "string",  # mon … sun
        "hour": "int",
        "minute": "int",
        "date": "string",  # 2025-03-30
        "time": "string",  # 09:05
        "zone": "string",
    },
    "transfer": {
        "id": "string",
        "state": "string",
        "reason": "string",
        "number": "string",
        "type": "string",
        "initiated_by": "string",
        "rule": "string",  # the rule that started it, "" if none
        "transferor": "string",
        "transferee": "string",
        "attempts": "int",
    },
}
#: Roots only some triggers provide.
TRIGGER_ROOTS: dict[str, frozenset[str]] = {
    "call.answered": frozenset({"leg"}),
    "call.ringing": frozenset({"leg"}),
    "call.held": frozenset({"leg"}),
    "transfer.ended": frozenset({"transfer"}),
}
COMMON_ROOTS = frozenset({"call", "now", "calendars", "trigger"})

_SAMPLES: dict[str, Any] = {
    "string": "2000",
    "int": 5,
    "list": [],
}
_SAMPLE_MEMBER = {"kind": "extension", "number": "2000", "status": "ANSWER", "channel": "PJSIP/2000-1"}
_SAMPLE_TRANSFER = {
    "id": "t1", "number": "2001", "type": "attended", "from": "2000", "initiated_by": "rule:r",
    "state": "completed", "reason": "policy",
}  # fmt: skip

#: CEL's macros: their first argument is a new variable, not a fact.
_MACROS = frozenset({"all", "exists", "exists_one", "map", "filter"})
_TOKEN = re.compile(
    r"""(?P<space>\s+)
    |(?P<string>[rR]?(?:'''(?:\\.|[^\\])*?'''|\"\"\"(?:\\.|[^\\])*?\"\"\"|'(?:\\.|[^'\\\n])*'|"(?:\\.|[^"\\\n])*"))
    |(?P<number>\d+(?:\.\d+)?(?:[eE][-+]?\d+)?[uU]?|0[xX][0-9a-fA-F]+)
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op>&&|\|\||==|!=|<=|>=|[-+*/%!<>?:.,()\[\]{}])
    |(?P<other>.)""",
    re.VERBOSE | re.DOTALL,
)


class ConditionError(ValueError):
    """An expression that cannot be used; ``line``/``column`` (1-based) locate it within the expression."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.line = line
        self.column = column


@dataclass(frozen=True, slots=True)
class Token:
    kind: str
    text: str
    offset: int


@dataclass(frozen=True, slots=True)
class Condition:
    """A compiled, checked condition.  ``fields``: root → the fields it reads (None: the whole root)."""

    source: str
    program: cel.Program
    fields: Mapping[str, frozenset[str] | None]

    def evaluate(self, context: cel.Context) -> bool:
        """True/False; ``ValueError``/``TypeError``/``KeyError``/``RuntimeError`` on a run-time error."""
        result = self.program.execute(context)
        if type(result) is not bool:
            raise TypeError(f"the condition gave {_type_name(result)}, not true or false")
        return result


def tokens(source: str) -> list[Token]:
    """CEL tokens (spaces dropped); enough to find names, not a parser."""
    out = []
    for match in _TOKEN.finditer(source):
        kind = match.lastgroup or "other"
        if kind != "space":
            out.append(Token(kind, match.group(), match.start()))
    return out


def position(source: str, offset: int) -> tuple[int, int]:
    """1-based (line, column) of ``offset`` in ``source``."""
    line = source.count("\n", 0, offset) + 1
    column = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return line, column


def _type_name(value: object) -> str:
    return {str: "a string", int: "a number", float: "a number", list: "a list", dict: "a map"}.get(
        type(value), type(value).__name__
    )


def references(source: str, trigger: str, calendars: Iterable[str]) -> dict[str, frozenset[str] | None]:
    """Check every fact ``source`` names; return root → fields read.  :class:`ConditionError` if unknown."""
    toks = tokens(source)
    known_calendars = frozenset(calendars)
    bound: set[str] = set()
    for i, tok in enumerate(toks):
        # ``list.exists(m, …)``: ``m`` is the macro's own variable.
        if (
            tok.kind == "ident"
            and tok.text in _MACROS
            and i > 0
            and toks[i - 1].text == "."
            and i + 2 < len(toks)
            and toks[i + 1].text == "("
            and toks[i + 2].kind == "ident"
        ):
            bound.add(toks[i + 2].text)
    fields: dict[str, set[str] | None] = {}
    roots = COMMON_ROOTS | TRIGGER_ROOTS[trigger]
    for i, tok in enumerate(toks):
        if tok.kind == "other":
            line, column = position(source, tok.offset)
            raise ConditionError(f"unexpected character {tok.text!r}", line, column)
        if tok.kind != "ident" or (i > 0 and toks[i - 1].text == "."):
            continue
        name = tok.text
        if i + 1 < len(toks) and toks[i + 1].text == "(":
            continue  # a function: the compiler knows them
        if name in bound or name in ("true", "false", "null", "in"):
            continue
        line, column = position(source, tok.offset)
        if name not in FACTS and name not in ("calendars", "trigger"):
            raise ConditionError(
                f"unknown name {name!r} (facts: {', '.join(sorted((*FACTS, 'calendars', 'trigger')))})",
                line,
                column,
            )
        if name not in roots:
            providers = [t for t, r in TRIGGER_ROOTS.items() if name in r]
            raise ConditionError(
                f"{name} is only known on {' / '.join(providers)}, not on {trigger}", line, column
            )
        if name == "trigger":
            fields.setdefault(name, None)
            continue
        field_tok = toks[i + 2] if i + 2 < len(toks) and toks[i + 1].text == "." else None
        if field_tok is None or field_tok.kind != "ident":
            fields[name] = None  # the whole root (``has(call)``, ``size(calendars)``…)
            continue
        allowed = known_calendars if name == "calendars" else frozenset(FACTS[name])
        if field_tok.text not in allowed:
            fline, fcolumn = position(source, field_tok.offset)
            what = "calendar" if name == "calendars" else f"field of {name}"
            choices = ", ".join(sorted(allowed)) or "none declared"
            raise ConditionError(f"unknown {what} {field_tok.text!r} (known: {choices})", fline, fcolumn)
        wanted = fields.get(name, set())
        if wanted is not None:
            wanted.add(field_tok.text)
            fields[name] = wanted
    return {root: (frozenset(f) if f is not None else None) for root, f in fields.items()}


def sample_facts(trigger: str, calendars: Iterable[str]) -> dict[str, Any]:
    """Facts of the right types with every field set: what the type check evaluates against."""
    facts: dict[str, Any] = {"trigger": trigger, "calendars": dict.fromkeys(calendars, "open")}
    for root in COMMON_ROOTS | TRIGGER_ROOTS[trigger]:
        if root in FACTS:
            facts[root] = {field: _SAMPLES[kind] for field, kind in FACTS[root].items()}
    facts["call"]["members"] = [_SAMPLE_MEMBER]
    facts["call"]["extensions"] = ["2000"]
    facts["call"]["transfers"] = [_SAMPLE_TRANSFER]
    return facts


def _operands(toks: list[Token], source: str) -> list[str]:
    """Sub-expressions joined by depth-0 ``&&``/``||`` (recursing into a fully parenthesised operand);
    none when the expression has a depth-0 ternary (its operands would not stand alone)."""
    depth = 0
    cuts: list[int] = []
    for i, tok in enumerate(toks):
        if tok.text in "([{" and tok.kind == "op":
            depth += 1
        elif tok.text in ")]}" and tok.kind == "op":
            depth -= 1
        elif depth == 0 and tok.text in ("?", ":"):
            return []
        elif depth == 0 and tok.text in ("&&", "||"):
            cuts.append(i)
    if not cuts:
        if len(toks) > 2 and toks[0].text == "(" and toks[-1].text == ")" and _closes_at_end(toks):
            inner = toks[1:-1]
            return _operands(inner, source)
        return []
    parts: list[str] = []
    bounds = [-1, *cuts, len(toks)]
    for a, b in itertools.pairwise(bounds):
        piece = toks[a + 1 : b]
        if not piece:
            return []
        text = source[piece[0].offset : piece[-1].offset + len(piece[-1].text)]
        parts.append(text)
        parts.extend(_operands(piece, source))
    return parts


def _closes_at_end(toks: list[Token]) -> bool:
    depth = 0
    for i, tok in enumerate(toks):
        if tok.kind == "op" and tok.text in "([{":
            depth += 1
        elif tok.kind == "op" and tok.text in ")]}":
            depth -= 1
            if depth == 0 and i != len(toks) - 1:
                return False
    return True


_PARSE_POSITION = re.compile(r"<input>:(\d+):(\d+): (?:Syntax error: )?([^\n]*)")


def compile_condition(source: str, trigger: str, calendars: Iterable[str] = ()) -> Condition:
    """Parse, name-check and type-check ``source`` for a rule on ``trigger`` (:class:`ConditionError`)."""
    calendars = tuple(calendars)
    if not source.strip():
        raise ConditionError("empty expression (leave `if` out to match every call)")
    try:
        program = cel.compile(source)
    except ValueError as exc:
        found = _PARSE_POSITION.search(str(exc))
        if found is None:
            raise ConditionError(f"syntax error: {str(exc).splitlines()[0]}") from None
        line, column, what = int(found.group(1)), int(found.group(2)), found.group(3)
        what = what.split(" expecting ", 1)[0].strip().replace("'<EOF>'", "end of expression")
        raise ConditionError(f"syntax error: {what}", line, column) from None
    fields = references(source, trigger, calendars)
    context = cel.Context(variables=sample_facts(trigger, calendars))
    toks = tokens(source)
    for text in [source, *_operands(toks, source)]:
        offset = source.find(text)
        line, column = position(source, max(offset, 0))
        try:
            result = (program if text == source else cel.compile(text)).execute(context)
        except (IndexError, RuntimeError):
            continue  # depends on the values (an index, a function's argument), not on the types
        except (TypeError, KeyError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if isinstance(exc, TypeError) and "No such overload" in first:
                first = "no such overload (CEL does not convert between types: compare like with like)"
            elif isinstance(exc, KeyError):
                first = f"no field {exc.args[0]!r}" if exc.args else "missing field"
            raise ConditionError(f"type error in {text!r}: {first}", line, column) from None
        if type(result) is not bool:
            raise ConditionError(f"{text!r} gives {_type_name(result)}, not true or false", line, column)
    return Condition(source, program, fields)


# ----------------------------------------------------------------------------------
# number templates: "{call.called}", "6{leg.number}"
# ----------------------------------------------------------------------------------

_PLACEHOLDER = re.compile(r"\{([^{}]*)\}")


@dataclass(frozen=True, slots=True)
class Template:
    """A number with ``{root.field}`` placeholders (string facts only)."""

    text: str
    fields: Mapping[str, frozenset[str] | None]

    def render(self, facts: Mapping[str, Any]) -> str:
        def value(match: re.Match[str]) -> str:
            root, _, field = match.group(1).partition(".")
            found = facts[root][field]
            return str(found)

        return _PLACEHOLDER.sub(value, self.text)


def compile_template(text: str, trigger: str, calendars: Iterable[str] = ()) -> Template:
    """Check a number template's placeholders; :class:`ConditionError` (column within the text)."""
    fields: dict[str, set[str]] = {}
    roots = COMMON_ROOTS | TRIGGER_ROOTS[trigger]
    for match in _PLACEHOLDER.finditer(text):
        root, dot, field = match.group(1).strip().partition(".")
        column = match.start() + 1
        if not dot or root not in FACTS or field not in FACTS[root]:
            raise ConditionError(
                f"unknown placeholder {{{match.group(1)}}} (write {{call.called}}, …)", 1, column
            )
        if root not in roots:
            raise ConditionError(f"{root} is not known on {trigger}", 1, column)
        if FACTS[root][field] not in ("string", "int"):
            raise ConditionError(f"{{{root}.{field}}} is a {FACTS[root][field]}, not a number", 1, column)
        fields.setdefault(root, set()).add(field)
    if "{" in _PLACEHOLDER.sub("", text) or "}" in _PLACEHOLDER.sub("", text):
        raise ConditionError("unbalanced { } in the number", 1, 1)
    if not text.strip():
        raise ConditionError("empty number", 1, 1)
    return Template(text, {root: frozenset(f) for root, f in fields.items()})
