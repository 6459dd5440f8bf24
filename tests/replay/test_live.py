"""Recording for real: the service runtime against the simulator, then replay.

These tests run the Yeastar adapter over loopback HTTP/WebSocket to the
in-process simulator (about half a second each).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from adapters.replay import read, replay
from adapters.replay.cli import record
from adapters.replay.live import LiveRecording
from adapters.replay.recorder import Recorder
from adapters.service.config import load
from adapters.yeastar.simulator import PbxSimulator, Phone
from engine.model import Policy
from tests.replay.support import cli

CLIENT_SECRET = "sim-secret"  # the simulator's default


async def test_a_live_run_replays_to_the_same_decisions(tmp_path: Path) -> None:
    """Busy first target, a fallback that does not answer in time, a second that does:
    timers, fallbacks and aborts all decided live, then again by the replay."""
    path = tmp_path / "live.jsonl"
    policy = Policy(no_answer_timeout_s=0.3, fallback_numbers=("5503301", "5503302"))
    async with LiveRecording(path, name="live", description="test", policy=policy) as rec:
        rec.sim.set_phone("2008", Phone(busy=True))
        rec.sim.set_phone("5503301", Phone(answer_after=None))
        rec.sim.set_phone("5503302", Phone(answer_after=0.05))
        await rec.call("5551234", "2005", inbound_trunk="stc")
        assert rec.start("t1", "2008", channel_id=rec.sim.channel_of("2005")) is None
        await rec.reach("t1")
        await rec.settle(0.1)
        live = [(r.transfer_id, r.action, r.channel_id, r.number) for r in rec.made]
        outcome = rec.outcomes()["t1"]

    report = replay(read(path))

    assert report.passed, "\n".join([report.summary(), *report.details()])
    assert not report.expectations  # a raw recording: checked against itself
    assert [
        (m.request.transfer_id, m.request.action, m.request.channel_id, m.request.number) for m in report.made
    ] == live
    assert [action for _, action, _, _ in live] == ["start", "abort", "start", "abort", "start", "complete"]
    assert report.states["t1"] == outcome == ("completed", "policy")


async def test_a_live_recording_holds_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "live.jsonl"
    async with LiveRecording(path, name="live", description="test", policy=Policy()) as rec:
        await rec.call("5551234", "2005", inbound_trunk="stc")
        rec.sim.expire_tokens()  # forces a fresh login and a new subscription: more tokens to leak
        await rec.until(lambda: rec.adapter.connected and rec.sim.subscribers > 0)
        # The simulator's live tokens (private: no public API lists them), read before it stops.
        tokens = [*rec.sim._access, *rec.sim._refresh]
    text = path.read_text()
    assert tokens and CLIENT_SECRET not in text
    for token in tokens:
        assert token not in text
    assert '"password":"***"' in text and '"access_token":"***"' in text


async def _simulator() -> PbxSimulator:
    sim = PbxSimulator()
    for number in ("2005", "2008"):
        sim.add_extension(number)
    await sim.start()
    return sim


def _config(tmp_path: Path, sim: PbxSimulator) -> Path:
    path = tmp_path / "xferd.toml"
    path.write_text(
        f'[pbx]\nkind = "yeastar"\nbase_url = "{sim.base_url}"\n'
        f'client_id = "{sim.config.client_id}"\nclient_secret = "{sim.config.client_secret}"\n'
        "[policy]\nno_answer_timeout_s = 15\n"
    )
    return path


async def _wait_for(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    async with asyncio.timeout(within_s):
        while not predicate():  # noqa: ASYNC110 - polling a file another process writes
            await asyncio.sleep(0.01)


async def test_record_writes_frames_and_snapshots_until_stopped(tmp_path: Path) -> None:
    sim = await _simulator()
    try:
        config = load(_config(tmp_path, sim))
        out = tmp_path / "recorded.jsonl"
        recorder = Recorder.open(
            out, name="recorded", platform="yeastar", policy=config.policy.engine_policy()
        )
        stop = asyncio.Event()
        task = asyncio.create_task(record(config.pbx[0], recorder, stop))
        await sim.wait_for(lambda: sim.subscribers > 0)
        sim.place_call("2005", "2008", answered=True)
        await _wait_for(lambda: out.read_text().count('"kind":"frame"') >= 4)
        stop.set()
        await task
        recorder.close()
    finally:
        await sim.stop()
    kinds = [json.loads(line)["kind"] for line in out.read_text().splitlines()]
    assert kinds[0] == "meta" and kinds[-1] == "end"
    assert "snapshot" in kinds and kinds.count("frame") >= 4
    scenario = read(out)
    assert scenario.meta.engine_policy().no_answer_timeout_s == 15
    report = replay(scenario)
    assert report.passed and report.made == []


async def test_record_command_stops_cleanly_on_sigint(tmp_path: Path) -> None:
    sim = await _simulator()
    out = tmp_path / "cli.jsonl"
    code = (
        "import argparse, sys\n"
        "from adapters.replay.cli import add_commands\n"
        "parser = argparse.ArgumentParser(prog='xferd')\n"
        "add_commands(parser.add_subparsers(required=True))\n"
        "args = parser.parse_args(sys.argv[1:])\n"
        "sys.exit(args.handler(args))\n"
    )
    try:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-c", code, "record", "--config", str(_config(tmp_path, sim)), "--out", str(out),
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        try:
            await _wait_for(lambda: out.exists() and '"kind":"snapshot"' in out.read_text())
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                _, err = await process.communicate()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
    finally:
        await sim.stop()
    assert process.returncode == 0, err
    assert b"lines written to" in err and b"Traceback" not in err
    text = out.read_text()
    assert json.loads(text.splitlines()[-1])["kind"] == "end"
    assert CLIENT_SECRET not in text


def test_record_command_bad_config_is_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.toml"
    config.write_text('[pbx]\nkind = "yeastar"\n')
    code, _, err = cli(capsys, "record", "--config", str(config), "--out", str(tmp_path / "x.jsonl"))
    assert code == 2
    assert (
        err.startswith(f"xferd: config error in {config}: [pbx].base_url: required") and err.count("\n") == 1
    )
    assert not (tmp_path / "x.jsonl").exists()
