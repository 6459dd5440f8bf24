"""Bad input, fuzzed at modest example counts (``python -m chaos`` runs the same fuzzers longer).

Zero crashes: no exception out of a parser, no 5xx from the control API, every
rejection a JSON ``{"error", "detail"}`` (HTTP) or a named reason (frames) or
one line naming the file (config), never quoting a secret.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from chaos.fuzz import fuzz_api_raw, fuzz_api_schema, fuzz_config, fuzz_frames, fuzz_webhooks, service_thread

EXAMPLES = 80
SEED = 8


@pytest.fixture(scope="module")
def api_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with service_thread(tmp_path_factory.mktemp("fuzz-api")) as url:
        yield url


def test_frames_never_crash_the_parser() -> None:
    stats = fuzz_frames(EXAMPLES, SEED)
    assert stats.examples >= EXAMPLES // 2 and stats.rejected > 0
    assert stats.crashes == []


def test_webhooks_are_401_unless_signed_and_never_crash() -> None:
    stats = fuzz_webhooks(EXAMPLES, SEED)
    assert stats.examples >= EXAMPLES // 2 and stats.rejected > 0
    assert stats.crashes == []


def test_bad_configs_are_one_line_errors_without_secrets() -> None:
    stats = fuzz_config(EXAMPLES, SEED)
    assert stats.examples >= EXAMPLES // 2 and stats.rejected > 0 and stats.accepted > 0
    assert stats.crashes == []


def test_control_api_from_its_openapi_schema(api_url: str) -> None:
    stats = fuzz_api_schema(api_url, EXAMPLES, SEED)
    assert stats.examples >= 20
    assert stats.crashes == []


def test_control_api_with_raw_requests(api_url: str) -> None:
    stats = fuzz_api_raw(api_url, EXAMPLES, SEED)
    assert stats.examples >= EXAMPLES // 2
    assert stats.crashes == []
