"""The metrics list, rendered from the service's Prometheus registry.

The families come from the registry of a service built offline (every
optional part on: see :func:`docsgen.api_ref.offline_service`), so a metric
added to :class:`~adapters.service.metrics.Metrics` or registered by a
feature's own collector is listed at the next build.  Counters are exported
with the ``_total`` suffix Prometheus adds (and ``_created`` timestamps);
histograms as ``_bucket``/``_sum``/``_count``.
"""

from __future__ import annotations

from prometheus_client.metrics import MetricWrapperBase

from docsgen.api_ref import offline_service


def families() -> list[tuple[str, str, str, tuple[str, ...]]]:
    """(exported name, type, help, label names) of every metric, in registration order."""
    metrics = offline_service().metrics
    # Label names: from the metric objects of Metrics (a labelled metric with no sample yet shows
    # none), declared on a collector's family, or seen on the samples.
    declared = {
        getattr(value, "_name", None): tuple(getattr(value, "_labelnames", ()))
        for value in vars(metrics).values()
        if isinstance(value, MetricWrapperBase)
    }
    found = []
    for family in metrics.registry.collect():
        labels = declared.get(family.name) or tuple(getattr(family, "_labelnames", ()))
        for sample in family.samples:
            labels += tuple(k for k in sample.labels if k not in labels and k != "le")
        name = family.name + ("_total" if family.type == "counter" else "")
        found.append((name, family.type, family.documentation, labels))
    return found


def render_table() -> str:
    """The metrics as a Markdown table (for the metrics reference page)."""
    lines = ["| metric | type | labels | what it counts |", "|---|---|---|---|"]
    for name, kind, help_text, labels in families():
        shown = ", ".join(f"`{label}`" for label in labels) or "—"
        lines.append(f'| <span id="{name}"></span>`{name}` | {kind} | {shown} | {help_text} |')
    return "\n".join(lines) + "\n"
