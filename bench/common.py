"""What every benchmark shares: the figure line, sizes, statistics, realistic
Yeastar traffic, child processes and a quiet service.

Why child processes: the machine has two cores, and the thing that feeds xferd
(the bench PBX, the simulator) must not steal the CPU of the thing measured.
The feeder runs in its own process, pinned to the other core when there is
one, and is driven over a pipe with one JSON object per line.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import random
import re
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from adapters.yeastar.sim_world import SERIAL

# --------------------------------------------------------------------------------------
# The figure line
# --------------------------------------------------------------------------------------

#: ``name: value unit (details)`` — what the smoke test and readers parse.
LINE = re.compile(
    r"^(?P<name>[A-Za-z_][\w@.\-]*): (?P<value>[-+]?\d+(?:\.\d+)?(?:e[-+]?\d+)?) (?P<unit>\S+) "
    r"\((?P<details>.*)\)$"
)


@dataclass(slots=True)
class Figure:
    """One printed figure.  ``met`` is None when the issue sets no goal for it."""

    name: str
    value: float
    unit: str
    details: str
    met: bool | None = None
    #: raw data a plot may want (latency samples, rates by size); never printed
    data: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.name}: {number(self.value)} {self.unit} ({self.details})"


def number(value: float) -> str:
    """Three significant digits at least, no thousands separators (the line must parse)."""
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:.0f}"
    if magnitude >= 1:
        return f"{value:.3g}" if magnitude < 100 else f"{value:.1f}"
    return f"{value:.3g}"


def goal(met: bool, text: str) -> str:
    """``goal <text>: met`` / ``goal <text>: MISSED`` (capitals so a miss stands out)."""
    return f"goal {text}: {'met' if met else 'MISSED'}"


def parse_line(text: str) -> dict[str, str] | None:
    match = LINE.match(text)
    return match.groupdict() if match else None


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100), nearest-rank on the sorted samples."""
    ordered = sorted(values)
    if not ordered:
        raise ValueError("no samples")
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------------------
# Sizes
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Sizes:
    """How big each figure runs.  ``full`` is what the issue asks for; ``quick``
    only proves the code runs (its figures are noise)."""

    quick: bool
    repeats: int  # scaling: alternating service/bare runs per size, median taken
    ingest_pairs: int  # figure 1: alternating service/bare pairs, median of the pair ratios
    ingest_calls: int
    ingest_frames: int  # measured frames per run
    warmup_frames: int
    scaling_calls: tuple[int, ...]
    latency_calls: int
    latency_transfers: int  # per round
    latency_rounds: int
    latency_rate: float  # transfers started per second
    background_fps: float
    answer_after: tuple[float, float]  # target phones answer after a delay in this range
    memory_calls: tuple[int, ...]
    memory_transfers: int  # active transfers on top of the live calls
    replay_frames: int
    replay_transfers: int
    load_transfers: int

    @classmethod
    def full(cls) -> Sizes:
        return cls(
            quick=False,
            repeats=3,
            ingest_pairs=5,
            ingest_calls=1_000,
            ingest_frames=120_000,
            warmup_frames=10_000,
            scaling_calls=(100, 10_000, 100_000),
            latency_calls=1_000,
            latency_transfers=200,
            latency_rounds=2,
            latency_rate=10.0,
            background_fps=2_000.0,
            answer_after=(0.1, 0.3),
            memory_calls=(10_000, 100_000),
            memory_transfers=1_000,
            replay_frames=200_000,
            replay_transfers=3_000,
            load_transfers=500,
        )

    @classmethod
    def tiny(cls) -> Sizes:
        return cls(
            quick=True,
            repeats=1,
            ingest_pairs=1,
            ingest_calls=100,
            ingest_frames=3_000,
            warmup_frames=500,
            scaling_calls=(10, 100, 1_000),
            latency_calls=60,
            latency_transfers=15,
            latency_rounds=1,
            latency_rate=50.0,
            background_fps=200.0,
            answer_after=(0.02, 0.05),
            memory_calls=(200, 2_000),
            memory_transfers=20,
            replay_frames=2_000,
            replay_transfers=30,
            load_transfers=20,
        )


# --------------------------------------------------------------------------------------
# The machine
# --------------------------------------------------------------------------------------


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


def _memory_gb() -> float:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:
        return "-"


def machine() -> list[str]:
    """A few lines that say what these figures were measured on."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    libs = ", ".join(
        f"{name} {_version(name)}"
        for name in ("python-statemachine", "websockets", "httpx", "uvicorn", "fastapi", "structlog")
    )
    return [
        f"machine: {_cpu_model()}, {cores} cores usable, {_memory_gb():.1f} GB RAM, "
        f"{platform.system()} {platform.release()}",
        f"python: {platform.python_implementation()} {platform.python_version()}; {libs}",
    ]


#: Set by ``python -m bench --pin``; inherited by the child processes.
PIN_ENV = "XFERD_BENCH_PIN"


def pin(cpu: int) -> bool:
    """Keep this process on ``cpu`` when ``--pin`` asked for it: feeder and measured
    code on separate cores, so neither steals the other's time.  Off by default:
    on a machine other work shares, a pinned process cannot dodge a busy core."""
    if os.environ.get(PIN_ENV) != "1" or not hasattr(os, "sched_setaffinity"):
        return False
    usable = sorted(os.sched_getaffinity(0))
    if len(usable) < 2:
        return False
    os.sched_setaffinity(0, {usable[cpu % len(usable)]})
    return True


# --------------------------------------------------------------------------------------
# Realistic Yeastar traffic
# --------------------------------------------------------------------------------------


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


def member(kind: str, number: str, channel_id: str, status: str, peer: str = "5550100") -> dict[str, Any]:
    """One ``members`` entry exactly as the simulator (and a P-Series) writes it."""
    fields: dict[str, str]
    if kind == "extension":
        fields = {"number": number}
    elif kind == "inbound":
        fields = {"from": number, "to": peer, "trunk_name": "siptrunk"}
    else:
        fields = {"from": peer, "to": number, "trunk_name": "siptrunk"}
    fields.update(channel_id=channel_id, member_status=status, call_path="")
    return {kind: fields}


def frame_30011(call_id: str, *members: dict[str, Any]) -> str:
    """A 30011 frame: ``msg`` is a JSON-encoded string, as the PBX sends it."""
    return compact(
        {"type": 30011, "sn": SERIAL, "msg": compact({"call_id": call_id, "members": list(members)})}
    )


class Traffic:
    """N live two-leg calls (an outside caller on a trunk, talking to an
    extension) and a stream of 30011 single-member deltas over them.

    The stream is what a busy PBX sends: mostly status changes of live legs
    (hold, resume), and some call churn (both legs hang up, a new call rings
    and is answered), so the number of live calls stays N.  Every frame
    changes something: none is a duplicate the registry could skip.
    """

    def __init__(self, calls: int, seed: int = 7, epoch: int = 1_700_000_000) -> None:
        self.rng = random.Random(seed)
        self._channel = 0xA000
        self._call = 0
        self._epoch = epoch
        # one row per live call: [call_id, trunk channel, caller, trunk status, ext channel, ext, ext status]
        self.live: list[list[str]] = [self._new_call() for _ in range(calls)]

    def _next_channel(self) -> int:
        self._channel += 1
        return self._channel

    def _new_call(self) -> list[str]:
        self._call += 1
        n = self._call
        ext = str(20000 + n % 80000)
        return [
            f"{self._epoch + n // 1000}.{n}",
            f"PJSIP/trunk-siptrunk-endpoint-{self._next_channel():08x}",
            f"0{self.rng.randrange(10**8, 10**9)}",
            "ANSWERED",
            f"PJSIP/{ext}-{self._next_channel():08x}",
            ext,
            "ANSWER",
        ]

    def query_rows(self) -> list[dict[str, Any]]:
        """``call/query``'s ``data`` for the live calls."""
        return [
            {
                "call_id": call[0],
                "members": [
                    member("inbound", call[2], call[1], call[3]),
                    member("extension", call[5], call[4], call[6]),
                ],
            }
            for call in self.live
        ]

    def frames(self, count: int, churn: float = 0.15) -> list[str]:
        """``count`` frames of realistic traffic (the world moves on as they are made)."""
        out: list[str] = []
        rng, live = self.rng, self.live
        while len(out) < count:
            i = rng.randrange(len(live))
            call = live[i]
            if rng.random() < churn:
                out.append(frame_30011(call[0], member("extension", call[5], call[4], "BYE")))
                out.append(frame_30011(call[0], member("inbound", call[2], call[1], "BYE")))
                new = self._new_call()
                live[i] = new
                out.append(frame_30011(new[0], member("inbound", new[2], new[1], "ALERT")))
                out.append(frame_30011(new[0], member("extension", new[5], new[4], "RING")))
                out.append(frame_30011(new[0], member("extension", new[5], new[4], "ANSWER")))
                out.append(frame_30011(new[0], member("inbound", new[2], new[1], "ANSWERED")))
            elif rng.random() < 0.5:
                call[3] = "HOLD" if call[3] != "HOLD" else "ANSWERED"
                out.append(frame_30011(call[0], member("inbound", call[2], call[1], call[3])))
            else:
                call[6] = "HOLD" if call[6] != "HOLD" else "ANSWER"
                out.append(frame_30011(call[0], member("extension", call[5], call[4], call[6])))
        return out[:count]


# --------------------------------------------------------------------------------------
# Child processes driven over a pipe
# --------------------------------------------------------------------------------------


#: The project root: children run ``python -m bench.…`` from there.
ROOT = str(Path(__file__).resolve().parent.parent)


class Child:
    """A ``python -m <module>`` child that answers one JSON line per JSON line.

    The child's stderr passes through (its errors are visible); every request
    has a deadline, and :meth:`close` ends the child by its own pid.
    """

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, module: str, *args: str) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=64 * 1024 * 1024,
            cwd=ROOT,
        )
        return cls(proc)

    async def ask(self, command: str, timeout_s: float = 120.0, **fields: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write((compact({"cmd": command, **fields}) + "\n").encode())
        await self.proc.stdin.drain()
        async with asyncio.timeout(timeout_s):
            line = await self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the bench child died while answering {command!r}")
        answer: dict[str, Any] = json.loads(line)
        if "error" in answer:
            raise RuntimeError(f"bench child: {answer['error']}")
        return answer

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                await self.ask("stop", timeout_s=10)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                self.proc.kill()  # our own child, by its pid
                await self.proc.wait()


async def serve_commands(handlers: dict[str, Any]) -> None:
    """The child side of :class:`Child`: read commands on stdin until ``stop``
    (or EOF), answer each with one JSON line on stdout."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=64 * 1024 * 1024)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    # Answers get the real stdout; anything else that prints (a library, a stray
    # log line) goes to stderr and cannot corrupt the protocol.
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    while True:
        line = await reader.readline()
        if not line:
            return
        request = json.loads(line)
        command = request.pop("cmd")
        if command == "stop":
            out.write(compact({"ok": True}) + "\n")
            out.flush()
            return
        try:
            answer = await handlers[command](**request)
        except Exception as exc:  # the parent shows it and stops
            answer = {"error": f"{command}: {type(exc).__name__}: {exc}"}
        out.write(compact(answer) + "\n")
        out.flush()


# --------------------------------------------------------------------------------------
# The service, quietly
# --------------------------------------------------------------------------------------


def quiet_logs() -> None:
    """Production logging (JSON lines at INFO, rendered and written) into
    ``/dev/null``: the cost of logging is part of what is measured, the noise
    is not."""
    from adapters.service import logs

    logs.configure("json", logging.INFO, stream=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the process


@contextlib.contextmanager
def tempdir() -> Iterator[Path]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="xferd-bench-") as tmp:
        yield Path(tmp)


def service_config(
    base_url: str,
    client_id: str,
    client_secret: str,
    store: Path,
    *,
    store_url: str | None = None,
    **policy: Any,
) -> Any:
    """A service config for a loopback PBX, API on a free loopback port, no API token
    (state in ``store``/xferd.sqlite3, or in PostgreSQL at ``store_url``)."""
    from pydantic import SecretStr

    from adapters.service.config import ApiConfig, Config, PolicyConfig, StoreConfig, YeastarPbx

    store.mkdir(parents=True, exist_ok=True)
    return Config(
        pbx=YeastarPbx(
            kind="yeastar", base_url=base_url, client_id=client_id, client_secret=SecretStr(client_secret)
        ),
        api=ApiConfig(listen="127.0.0.1:0"),
        store=StoreConfig(url=SecretStr(store_url))
        if store_url is not None
        else StoreConfig(path=store / "xferd.sqlite3"),
        policy=PolicyConfig(**policy),
    )
