"""The README's performance plot, drawn from the figures of the run that just happened.

Left: the distribution of decision latency (target ANSWER frame → ``complete``
request) for xferd and for the bare echo client, as cumulative curves.
Right: ingest rate against live calls, xferd and the bare client.
Only what this run measured is drawn; matplotlib is imported here alone, so
the benchmarks themselves do not need it.
"""

from __future__ import annotations

from bench.common import Figure


def draw(done: dict[str, list[Figure]], path: str) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    plain = FuncFormatter(lambda value, _: f"{value:g}")

    latency = next((f.data for f in done.get("latency", []) if f.data.get("xferd")), None)
    scaling = [f for f in done.get("scaling", []) if f.name.startswith("ingest_rate@")]
    panels = [
        p for p in ("latency", "scaling") if (p == "latency" and latency) or (p == "scaling" and scaling)
    ]
    if not panels:
        return "nothing to draw (run latency and/or scaling)"
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.2), squeeze=False)
    for ax, panel in zip(axes[0], panels, strict=True):
        if panel == "latency" and latency:
            for key, label, style in (("xferd", "xferd (service)", "-"), ("echo", "bare echo client", "--")):
                samples = sorted(s * 1000 for s in latency[key])
                n = len(samples)
                ax.step(
                    samples, [(i + 1) / n for i in range(n)], style, where="post", label=f"{label}, n={n}"
                )
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(plain)
            ax.xaxis.set_minor_formatter(plain)
            ax.tick_params(axis="x", which="minor", labelsize=7)
            ax.set_xlabel("target ANSWER frame → complete request (ms, log scale)")
            ax.set_ylabel("fraction of transfers")
            ax.set_title("Decision latency (1,000 live calls, 2,000 frames/s background)", fontsize=10)
            ax.axhline(0.5, color="grey", linewidth=0.5)
            ax.axhline(0.99, color="grey", linewidth=0.5)
            ax.legend(loc="lower right", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        else:
            calls = [int(f.name.split("@")[1]) for f in scaling]
            ax.plot(calls, [f.value for f in scaling], "o-", label="xferd (whole service)")
            ax.plot(
                calls, [f.data["bare"] for f in scaling], "s--", label="bare client (receive + 2 json.loads)"
            )
            floor = scaling[0].value * 0.8
            ax.axhline(
                floor, color="grey", linewidth=0.8, linestyle=":", label="goal: >= 80 % of the rate at 100"
            )
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
            ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
            ax.set_ylim(bottom=0)
            ax.set_xlabel("live calls (log scale)")
            ax.set_ylabel("30011 frames per second")
            ax.set_title("Ingest rate vs live calls", fontsize=10)
            ax.legend(loc="lower left", fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"{', '.join(panels)} drawn into {path}"
