"""Fixtures of the several-instances tests: PostgreSQL from ``tests/pg.py``.

``ha_db``: an empty database of this test session's own (``pg_url``: created
and dropped by the session, emptied for each test); ``ha_database``: only the
check that PostgreSQL is there (tests whose harness makes databases itself).
Unreachable PostgreSQL: skipped loudly ("PostgreSQL tests NOT RUN"), or failed
with ``CI`` set.
"""

from __future__ import annotations

import pytest


@pytest.fixture
def ha_db(pg_url: str) -> str:
    return pg_url


@pytest.fixture
def ha_database(pg_database: str) -> str:
    return pg_database
