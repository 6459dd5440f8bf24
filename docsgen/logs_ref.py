"""The log events, read from the source: every ``log.<level>("event", key=...)`` call.

``xferd run`` writes one JSON object per line; each carries ``event`` (the
first argument of the call), ``level``, ``logger``, ``timestamp`` and the
call's keyword arguments.  This module finds those calls in ``adapters/``
(the simulators aside: they are test tools) so the list of events and their
fields stays the code's.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LEVELS = ("debug", "info", "warning", "error", "exception", "critical")
#: Test tools that log but are not part of the service.
SKIPPED = ("simulator.py", "sim_world.py")


@dataclass(frozen=True)
class LogEvent:
    event: str
    level: str
    fields: tuple[str, ...]
    module: str


def _logger_names(tree: ast.Module, module: str) -> dict[str, str]:
    """Module-level ``log = get_logger("xferd.x")`` / ``structlog.get_logger(__name__)`` → logger name."""
    names: dict[str, str] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            func = node.value.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if called == "get_logger" and isinstance(node.targets[0], ast.Name):
                arg = node.value.args[0] if node.value.args else None
                logger = arg.value if isinstance(arg, ast.Constant) else module
                names[node.targets[0].id] = str(logger)
    return names


def events(root: Path = ROOT) -> list[LogEvent]:
    """Every log event of the service's modules, one per (event, level, module)."""
    found: dict[tuple[str, str, str], set[str]] = {}
    for path in sorted((root / "adapters").rglob("*.py")):
        if path.name in SKIPPED:
            continue
        module = ".".join(path.relative_to(root).with_suffix("").parts)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        loggers = _logger_names(tree, module)
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in LEVELS:
                target, level = func.value, func.attr
            elif isinstance(func, ast.Call) and getattr(func.func, "id", "") == "getattr" and func.args:
                target, level = func.args[0], "varies"  # getattr(log, level)(...): chosen at run time
            else:
                continue
            if not (isinstance(target, ast.Name) and target.id in loggers):
                continue
            if not node.args or not isinstance(node.args[0], ast.Constant):
                continue
            key = (str(node.args[0].value), level, loggers[target.id])
            found.setdefault(key, set()).update(k.arg for k in node.keywords if k.arg)
    return [
        LogEvent(event, level, tuple(sorted(fields)), logger)
        for (event, level, logger), fields in sorted(found.items())
    ]


def render_table() -> str:
    lines = ["| event | level | logger | fields |", "|---|---|---|---|"]
    for item in events():
        fields = ", ".join(f"`{f}`" for f in item.fields) or "—"
        level = "error (with `exception`)" if item.level == "exception" else item.level
        lines.append(f"| `{item.event}` | {level} | `{item.module}` | {fields} |")
    return "\n".join(lines) + "\n"
