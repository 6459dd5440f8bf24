"""``xferd run`` as a subprocess against the in-process Yeastar simulator, for SIGKILL faults.

Reuses the black-box helpers of ``tests/service/conftest.py`` (:class:`Xferd`,
:func:`write_config`): the same process, config and log handling the
black-box tests use.  Each kill harvests the dead process's log lines into
the run's :class:`~chaos.support.LogWatch` before the next process starts on
the same store.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import httpx

from adapters.service.writeahead import KILL_POINT_ENV
from adapters.yeastar.simulator import Phone, SimConfig
from chaos.support import CLIENT_SECRET, ChaosSimulator, LogWatch, fresh_number
from tests.service.conftest import API_TOKEN, Xferd, write_config


class _KillableXferd(Xferd):
    """``xferd run`` with the write-ahead kill point configured (armed only while its file exists)."""

    kill_point: Path

    async def start(self) -> Xferd:
        await self._launch(
            {
                **os.environ,
                "XFERD_PBX_CLIENT_SECRET": self.sim.config.client_secret,
                KILL_POINT_ENV: str(self.kill_point),
            }
        )
        await self._until_healthy()
        return self


class KillWorld:
    """One simulator; ``xferd run`` processes started, SIGKILLed and restarted on one store."""

    platform = "yeastar"

    def __init__(self, tmp: Path, watch: LogWatch, *, sim_config: SimConfig | None = None) -> None:
        self.tmp = tmp
        self.watch = watch
        config = sim_config or SimConfig()
        config.client_secret = CLIENT_SECRET
        self.sim = ChaosSimulator(config)
        self.sim.on_token = lambda token: watch.secrets.add(token)
        watch.secrets.update({API_TOKEN, CLIENT_SECRET})
        self.store_path = tmp / "xferd.sqlite3"
        self.kill_point = tmp / "kill-after-commit"
        self.config_path = tmp / "xferd.toml"
        self.xf: Xferd | None = None
        self.api_5xx: list[str] = []
        self.exits: list[str] = []  # processes that ended without being killed
        self.kills = 0
        self._harvested = 0

    @property
    def api(self) -> httpx.AsyncClient:
        assert self.xf is not None, "start() first"
        return self.xf.http

    async def start(self) -> None:
        await self.sim.start()
        write_config(self.config_path, self.sim, self.store_path, no_answer_timeout_s=4)
        await self.launch()

    async def launch(self) -> None:
        """Start ``xferd run`` on the same config and store; returns once its PBX link is up."""
        for _ in range(3):  # bounded: a start that fails is reported, then tried again
            xf = _KillableXferd(self.config_path, self.sim)
            xf.kill_point = self.kill_point
            xf.http.event_hooks["response"] = [self._check_response]
            try:
                await xf.start()
            except AssertionError as exc:
                self.exits.append(f"xferd did not start: {str(exc)[-500:]}")
                await xf.close()
                continue
            # Swapped in only once it serves: until then clients see the old, closed one.
            self.xf = xf
            self._harvested = 0
            return

    async def _check_response(self, response: httpx.Response) -> None:
        if response.status_code >= 500 and response.status_code not in (502, 503):
            await response.aread()
            self.api_5xx.append(f"{response.request.method} {response.request.url.path}: {response.text}")

    def harvest(self) -> None:
        """Feed the current process's new log lines to the watch."""
        if self.xf is None:
            return
        lines = self.xf.lines
        for line in lines[self._harvested :]:
            self.watch.write(line + "\n")
        self._harvested = len(lines)

    def alive(self) -> bool:
        return self.xf is not None and self.xf.proc is not None and self.xf.proc.returncode is None

    async def kill(self) -> None:
        """SIGKILL the service (noting it if it had already died by itself)."""
        assert self.xf is not None
        if not self.alive():
            self.exits.append(
                f"xferd exited by itself with {self.xf.proc.returncode if self.xf.proc else '?'}"
            )
        await self.xf.kill()
        self.harvest()
        await self.xf.http.aclose()
        self.kills += 1

    def arm_kill_after_commit(self) -> None:
        """The next commit that decides a request kills the process before the request leaves."""
        self.kill_point.write_text("armed\n")

    async def killed_after_commit(self, within_s: float) -> bool:
        """Wait (bounded) for the armed kill point to kill the process; disarm if it did not."""
        assert self.xf is not None and self.xf.proc is not None
        try:
            async with asyncio.timeout(within_s):
                await self.xf.proc.wait()
        except TimeoutError:
            self.kill_point.unlink(missing_ok=True)  # no request was decided meanwhile
            return False
        await self.xf.kill()  # waits for its log reader
        self.harvest()
        await self.xf.http.aclose()
        self.kills += 1
        return True

    async def stop(self) -> None:
        if self.xf is not None:
            if self.alive():
                code = await self.xf.terminate()
                if code != 0:
                    self.exits.append(f"xferd exited {code} on SIGTERM")
            self.harvest()
            await self.xf.close()
        await self.sim.stop()

    async def connected(self, within_s: float = 20.0) -> bool:
        if not self.alive():
            return False
        with contextlib.suppress(AssertionError):
            assert self.xf is not None
            await self.xf.connected(within_s)
            return True
        return False

    def extension(self, phone: Phone | None = None) -> str:
        number = fresh_number()
        self.sim.add_extension(number, phone or Phone(answer_after=0.05))
        return number

    def hang_up_all(self, numbers: Any) -> None:
        wanted = set(numbers)
        for leg in self.sim.legs().values():
            if leg.number in wanted:
                with contextlib.suppress(Exception):
                    self.sim.hangup(leg.channel_id)
