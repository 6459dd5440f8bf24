"""Write the generated reference pages into the MkDocs build (run by mkdocs-gen-files).

``mkdocs.yml`` names this script under the ``gen-files`` plugin; MkDocs runs
it at every build and serve.  The pages exist only in the build, never in
``docs/``: edit the code (or the generators in this package), not them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import mkdocs_gen_files

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # mkdocs runs this file by path; the package lives beside it
    sys.path.insert(0, str(ROOT))

from docsgen import api_ref, cli_ref, config_ref, logs_ref, metrics_ref  # noqa: E402

PAGES = {
    "reference/configuration.md": (config_ref.render, "adapters/service/config.py"),
    "reference/api.md": (api_ref.render, "adapters/service/api.py"),
    "reference/cli.md": (cli_ref.render, "adapters/cli.py"),
    "reference/rules-file.md": (config_ref.render_rules, "adapters/service/rules.py"),
    "reference/metrics.md": (
        lambda: (
            "# Metrics\n\n"
            "<!-- Generated from adapters/service/metrics.py by docsgen/metrics_ref.py "
            "at every build. -->\n\n"
            "`GET /metrics` (role `viewer`) serves these in the Prometheus text format. Counters carry the "
            "`_total` suffix (and a `_created` timestamp); histograms are exported as `_bucket`, `_sum` and "
            "`_count`. What to alert on: [Monitoring](../operations/monitoring.md).\n\n"
            + metrics_ref.render_table()
        ),
        "adapters/service/metrics.py",
    ),
    "reference/logs.md": (
        lambda: (
            "# Log events\n\n"
            "<!-- Generated from the log calls in adapters/ by docsgen/logs_ref.py at every build. -->\n\n"
            "Every event the service logs, with the fields it carries besides the ones every line has "
            "(`event`, `level`, `logger`, `timestamp`). How to read and ship the log: "
            "[Logging](../operations/logging.md).\n\n" + logs_ref.render_table()
        ),
        "adapters/service/logs.py",
    ),
}

for page, (render, _source) in PAGES.items():
    with mkdocs_gen_files.open(page, "w") as out:
        out.write(render())


def _engine_table() -> str:
    """The state × stimulus table and its notes, as :mod:`engine.chart`'s docstring has them."""
    import engine.chart

    doc = engine.chart.__doc__ or ""
    table = doc[doc.index("State × stimulus table") :]
    body = table.split("\n", 2)[2].strip("\n")  # drop the heading and its underline
    return (
        "# The engine's state × stimulus table\n\n"
        "<!-- Copied from engine/chart.py's docstring by docsgen/pages.py at every build. -->\n\n"
        "Every stimulus a transfer can meet, in every state, and what it does; the engine's "
        "`TABLE` (engine/chart.py) holds the same cells as data and the tests check each one. "
        "How to read it: [How the engine decides](../concepts/engine.md).\n\n"
        "```text\n" + body.replace("``", "`") + "\n```\n"
    )


with mkdocs_gen_files.open("reference/engine-table.md", "w") as out:
    out.write(_engine_table())
