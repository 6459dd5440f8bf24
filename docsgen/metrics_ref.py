"""The metrics list, rendered from the service's Prometheus registry.

:class:`~adapters.service.metrics.Metrics` creates every metric on its own
registry; this module reads that registry's families (name, type, help,
labels), so a metric added there is listed at the next build.  Counters are
exported with the ``_total`` suffix Prometheus adds (and ``_created``
timestamps); histograms as ``_bucket``/``_sum``/``_count``.
"""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from adapters.service.metrics import Metrics


def families() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(exported name, type, help, label names) of every metric, in definition order."""
    found = []
    for value in vars(Metrics()).values():
        if isinstance(value, MetricWrapperBase):
            kind = value._type  # counter / gauge / histogram / summary
            name = value._name + ("_total" if kind == "counter" else "")
            found.append((name, kind, value._documentation, tuple(value._labelnames)))
    return found


def render_table() -> str:
    """The metrics as a Markdown table (for the monitoring page)."""
    lines = ["| metric | type | labels | what it counts |", "|---|---|---|---|"]
    for name, kind, help_text, labels in families():
        shown = ", ".join(f"`{label}`" for label in labels) or "—"
        lines.append(f'| <span id="{name}"></span>`{name}` | {kind} | {shown} | {help_text} |')
    return "\n".join(lines) + "\n"
