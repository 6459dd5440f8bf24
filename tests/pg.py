"""PostgreSQL for tests: one throw-away database per test session.

Fixtures (imported by ``tests/conftest.py``, so every test can ask for them):

* ``pg_database`` (session): creates ``xferd_test_<pid>_<random>`` on the
  server's ``postgres`` database, yields its URL, drops it at the end (with
  ``FORCE``: a connection a failed test left open must not keep it alive).
* ``pg_url`` (function): that database emptied (other sessions on it ended,
  schema ``public`` recreated), so each test starts from no tables and no
  leftover connections; the URL to give ``PgStore`` or a ``[store] url``.
* ``pg_reachable()`` / ``pg_unavailable(reason)``: for a test that runs with
  or without PostgreSQL (the bench smoke test).

The server is ``XFERD_TEST_PG`` (default ``postgresql://postgres@127.0.0.1:5432/postgres``).
Unreachable, the tests that need it are skipped with a reason starting
"PostgreSQL tests NOT RUN" — unless the environment variable ``CI`` is set,
when they fail: CI has PostgreSQL, so a missing one is a broken machine, not
a reason to pass.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

#: The server the tests use (its ``postgres`` database: where databases are created).
ADMIN_URL = os.environ.get("XFERD_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def _with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, ""))


def pg_unavailable(reason: str) -> None:
    """Fail (under CI) or skip loudly: the PostgreSQL tests cannot run."""
    message = f"PostgreSQL tests NOT RUN: {reason} (server {ADMIN_URL}; set XFERD_TEST_PG to change it)"
    if os.environ.get("CI"):
        pytest.fail(f"{message} — CI is set, so this is a failure", pytrace=False)
    pytest.skip(message)


def pg_reachable() -> str | None:
    """None if the test server answers, else why not (for tests that run with or without it)."""
    try:
        import psycopg

        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3):
            return None
    except Exception as exc:  # ImportError or any psycopg error: either way, no PostgreSQL
        return " ".join(str(exc).split()) or type(exc).__name__


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """URL of a database of this test session's own, dropped at the end."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        pg_unavailable(f"psycopg cannot be imported ({exc})")
        raise
    name = f"xferd_test_{os.getpid()}_{secrets.token_hex(4)}"
    try:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
    except psycopg.Error as exc:
        pg_unavailable(" ".join(str(exc).split()))
    try:
        yield _with_database(ADMIN_URL, name)
    finally:
        with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def pg_url(pg_database: str) -> str:
    """The session's database with no tables (each test starts from an empty schema)."""
    import psycopg

    with psycopg.connect(pg_database, autocommit=True, connect_timeout=3) as conn:
        # A previous test's processes (a stopped instance, a leaked pool) may still hold
        # connections and locks: end them, so the reset cannot wait for them.
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
        conn.execute("SET lock_timeout = '10s'")
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")
    return pg_database
