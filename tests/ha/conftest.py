"""Fixtures of the several-instances tests: a PostgreSQL database of their own.

``ha_db``: the URL of an empty database (the session's own, created and
dropped by ``tests/pg.py``'s ``pg_url`` when that exists; otherwise here, the
same way).  Unreachable PostgreSQL: skipped loudly, or failed with ``CI`` set.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

ADMIN_URL = os.environ.get("XFERD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def unavailable(reason: str) -> None:
    message = f"PostgreSQL tests NOT RUN: {reason} (server {ADMIN_URL})"
    if os.environ.get("CI"):
        pytest.fail(f"{message} — CI is set, so this is a failure", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def ha_database() -> Iterator[str]:
    import psycopg

    name = f"xferd_test_ha_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        unavailable(" ".join(str(exc).split()))
    parts = urlsplit(ADMIN_URL)
    try:
        yield urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def ha_db(ha_database: str) -> str:
    """An empty database (schema ``public`` recreated) for one test."""
    import psycopg

    with psycopg.connect(ha_database, autocommit=True, connect_timeout=3) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return ha_database
