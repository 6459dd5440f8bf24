"""The live stream across instances (NOTIFY payload packing, a real LISTEN/NOTIFY round trip)
and the ``[ha]`` config."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from adapters.service.config import ConfigError, load
from adapters.service.ha_stream import PAYLOAD_BYTES, SharedHub, Unpacker, pack
from adapters.service.metrics import Metrics


def test_small_messages_share_one_payload_and_a_big_one_is_chunked_and_joined() -> None:
    small = [("acme", {"kind": "call", "n": n}) for n in range(3)]
    (payload,) = pack("a", 1, small)
    assert Unpacker().feed(payload) == ("a", small)
    big = [("acme", {"kind": "transfer", "blob": "é" * 20000})]  # escaped: 6 bytes a character
    payloads = pack("a", 2, big)
    assert len(payloads) > 10 and all(len(p.encode()) <= PAYLOAD_BYTES for p in payloads)
    unpacker = Unpacker()
    # Another sender's chunks interleave: each batch is joined on its own.
    other = pack("b", 7, [(None, {"kind": "x", "blob": "y" * 9000})])
    results = []
    for n, chunk in enumerate(payloads):
        results.append(unpacker.feed(chunk))
        if n < len(other):
            results.append(unpacker.feed(other[n]))
    done = [r for r in results if r is not None]
    assert ("b", [(None, {"kind": "x", "blob": "y" * 9000})]) in done
    assert ("a", big) in done


def test_a_batch_missing_a_chunk_is_dropped_not_garbled() -> None:
    payloads = pack("a", 3, [("acme", {"blob": "z" * 20000})])
    unpacker = Unpacker()
    assert [unpacker.feed(p) for n, p in enumerate(payloads) if n != 1] == [None] * (len(payloads) - 1)
    assert unpacker.feed("garbage") is None


async def test_changes_published_on_one_instance_reach_the_other_instances_clients(ha_db: str) -> None:
    one, two = SharedHub(Metrics(), ha_db, "one"), SharedHub(Metrics(), ha_db, "two")
    await one.start()
    await two.start()
    try:
        mine, theirs = one.subscribe(), two.subscribe()
        big = {"kind": "transfer", "transfer": {"id": "t1", "pbx": "acme", "note": "n" * 12000}}
        # LISTEN is asynchronous: publish until the first message arrives, then a big one.
        async with asyncio.timeout(10):
            while theirs.queue.empty():
                one.publish({"kind": "hello"}, "acme")
                await asyncio.sleep(0.1)
            one.publish(big, "acme")
            while True:
                text = await theirs.get()
                assert text is not None
                if json.loads(text).get("kind") == "transfer":
                    break
        assert json.loads(text) == big
        # The publisher's own clients got it once, from the local hub (its NOTIFY is skipped).
        local = []
        while not mine.queue.empty():
            local.append(json.loads(mine.queue.get_nowait() or "{}"))
        assert local.count(big) == 1
    finally:
        await one.stop()
        await two.stop()


def write(tmp_path: Path, ha: str) -> Path:
    path = tmp_path / "xferd.toml"
    path.write_text(
        '[pbx]\nkind = "yeastar"\nbase_url = "http://127.0.0.1:1"\nclient_id = "c"\nclient_secret = "s"\n'
        f"[ha]\n{ha}\n"
    )
    return path


def test_ha_keys_have_defaults_and_bounds(tmp_path: Path) -> None:
    config = load(write(tmp_path, 'instance_id = "xferd-a"\nadvertise_url = "http://10.0.0.1:8765/"'))
    assert (config.ha.instance_id, config.ha.advertise_url) == ("xferd-a", "http://10.0.0.1:8765")
    assert (config.ha.lease_ttl_s, config.ha.renew_s) == (3.0, 1.0)
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, "lease_ttl_s = 2.0\nrenew_s = 1.0"))
    assert "renew_s" in str(info.value) and "third of lease_ttl_s" in str(info.value)
    assert "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="advertise_url"):
        load(write(tmp_path, 'advertise_url = "10.0.0.1:8765"'))
