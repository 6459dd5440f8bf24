"""Config file (contract §2) and CLI argument errors (contract §1): one line, exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from adapters.service.config import ConfigError, load

YEASTAR = """
[pbx]
kind = "yeastar"
base_url = "https://192.168.5.150:8088"
client_id = "abc"
client_secret = "file-secret-123"

[api]
listen = "127.0.0.1:8765"
token = "api-token-123"

[store]
path = "state.sqlite3"

[policy]
on_answer = "threeway"
answer_delay_s = 1
no_answer_timeout_s = 15
on_transferor_hangup = "abort"
fallback_numbers = ["2008", "5550100"]
"""

WEBEX = """
[pbx]
kind = "webex"
access_token = "wx-access-123"
webhook_secret = "wx-hook-123"
events = "poll"
poll_interval_s = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "xferd.toml"
    path.write_text(text)
    return path


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(write(tmp_path, text), env or {})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"config error in {tmp_path / 'xferd.toml'}: ")
    return message.split(": ", 1)[1]


def test_full_yeastar_config(tmp_path: Path) -> None:
    config = load(write(tmp_path, YEASTAR), {})
    assert config.pbx[0].kind == "yeastar"
    assert config.pbx[0].client_secret.get_secret_value() == "file-secret-123"
    assert config.pbx[0].topics == (30011, 30012, 30015)
    assert (config.api.host, config.api.port) == ("127.0.0.1", 8765)
    # relative store paths are relative to the config file, not the cwd
    assert config.store.path == tmp_path / "state.sqlite3"
    policy = config.policy.engine_policy()
    assert policy.on_answer == "threeway" and policy.answer_delay_s == 1.0
    assert policy.fallback_numbers == ("2008", "5550100")
    assert "file-secret-123" not in repr(config)


def test_webex_defaults_and_env_secrets(tmp_path: Path) -> None:
    env = {"XFERD_PBX_ACCESS_TOKEN": "env-access", "XFERD_API_TOKEN": "env-api"}
    config = load(write(tmp_path, WEBEX), env)
    assert config.pbx[0].kind == "webex"
    assert config.pbx[0].base_url == "https://webexapis.com/v1"
    assert config.pbx[0].access_token.get_secret_value() == "env-access"
    assert config.api.token is not None and config.api.token.get_secret_value() == "env-api"
    assert config.store.path == tmp_path / "xferd.sqlite3"


def test_client_secret_may_come_only_from_env(tmp_path: Path) -> None:
    text = YEASTAR.replace('client_secret = "file-secret-123"\n', "")
    assert error_of(tmp_path, text) == "[pbx].client_secret: required"
    config = load(write(tmp_path, text), {"XFERD_PBX_CLIENT_SECRET": "from-env"})
    assert config.pbx[0].kind == "yeastar"
    assert config.pbx[0].client_secret.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('client_id = "abc"\n', "", "[pbx].client_id: required"),
        ('kind = "yeastar"', 'kind = "asterisk"', "[pbx].kind: 'yeastar' or 'webex'"),
        ("[store]", "[store]\nfsync = true", "[store].fsync: unknown key"),
        ('on_answer = "threeway"', 'on_answer = "transfer"', "[policy].on_answer: should be "),
        (
            "no_answer_timeout_s = 15",
            "no_answer_timeout_s = 0",
            "[policy].no_answer_timeout_s: should be greater",
        ),
        ("no_answer_timeout_s = 15", 'no_answer_timeout_s = "15"', "[policy].no_answer_timeout_s: should be"),
        ('"2008", ', "2008, ", "[policy].fallback_numbers[0]: should be a valid string"),
        ("https://192.168.5.150:8088", "192.168.5.150", "[pbx].base_url: an http:// or https:// URL"),
        ('listen = "127.0.0.1:8765"', 'listen = "localhost"', "[api].listen: host:port"),
        (
            'listen = "127.0.0.1:8765"\ntoken = "api-token-123"',
            'listen = "0.0.0.0:8765"',
            "[api].token: required when [api].listen is not a loopback address",
        ),
        ('client_id = "abc"', 'client_id = "abc"\ntopics = 30011', "[pbx].topics: should be a valid tuple"),
        (
            'client_id = "abc"',
            'client_id = "abc"\nverify_tls = "no"',
            "[pbx].verify_tls: should be a valid boolean",
        ),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, old: str, new: str, expected: str) -> None:
    assert old in YEASTAR
    assert error_of(tmp_path, YEASTAR.replace(old, new)).startswith(expected)


def test_webex_refuses_threeway_policy(tmp_path: Path) -> None:
    message = error_of(tmp_path, WEBEX + '[policy]\non_answer = "threeway"\n')
    assert message.startswith("[policy].on_answer: 'complete' or 'hold'")


def test_errors_never_echo_a_secret(tmp_path: Path) -> None:
    # a secret given with the wrong type must not be quoted back
    text = YEASTAR.replace('token = "api-token-123"', "token = 12345678")
    message = error_of(tmp_path, text)
    assert message.startswith("[api].token:")
    assert "12345678" not in message


def test_unreadable_and_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load(tmp_path / "missing.toml", {})
    assert error_of(tmp_path, "[pbx\n").startswith("not valid TOML")


def xferd(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "adapters.cli", *args], capture_output=True, text=True, timeout=30, cwd=cwd
    )


def test_cli_config_error_is_one_line_exit_2(tmp_path: Path) -> None:
    path = write(tmp_path, YEASTAR.replace('kind = "yeastar"', 'kind = "yeastar"\nclient_secrt = "x"'))
    done = xferd("run", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr == f"xferd: config error in {path}: [pbx].client_secrt: unknown key\n"


def test_cli_non_loopback_without_token_exit_2(tmp_path: Path) -> None:
    text = YEASTAR.replace('listen = "127.0.0.1:8765"\ntoken = "api-token-123"', 'listen = "[::]:8765"')
    done = xferd("run", "--config", str(write(tmp_path, text)), cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "[api].token: required" in done.stderr
    assert "file-secret-123" not in done.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((), "xferd: error: the following arguments are required: COMMAND\n"),
        (("run",), "xferd: error: the following arguments are required: --config\n"),
        (
            ("simulate", "--port", "http"),
            "xferd: error: argument --port: invalid port 'http': expected 0-65535\n",
        ),
        (("fly",), "xferd: error: argument COMMAND: invalid choice: 'fly'"),
    ],
)
def test_cli_bad_arguments_one_line_exit_2(tmp_path: Path, args: tuple[str, ...], expected: str) -> None:
    done = xferd(*args, cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.startswith(expected)
    assert done.stderr.count("\n") == 1


INTEGRATION = """
[pbx]
kind = "webex"
client_id = "Cintegration"
webhook_secret = "wx-hook-123"
"""


def test_webex_integration_with_env_secrets(tmp_path: Path) -> None:
    env = {"XFERD_PBX_CLIENT_SECRET": "env-client-secret", "XFERD_PBX_REFRESH_TOKEN": "env-refresh"}
    (pbx,) = load(write(tmp_path, INTEGRATION), env).pbx
    assert pbx.kind == "webex" and pbx.oauth and pbx.access_token is None
    assert pbx.client_secret is not None and pbx.refresh_token is not None
    assert pbx.refresh_token.get_secret_value() == "env-refresh"
    # the refresh token may come from the store instead (xferd webex authorize)
    config = load(write(tmp_path, INTEGRATION), {"XFERD_PBX_CLIENT_SECRET": "s"})
    assert config.pbx[0].kind == "webex" and config.pbx[0].refresh_token is None  # type: ignore[union-attr]
    assert "env-client-secret" not in repr(config)


def test_an_integration_in_one_of_several_pbxs_is_named_by_its_entry(tmp_path: Path) -> None:
    text = INTEGRATION.replace("[pbx]", '[[pbx]]\nname = "globex"') + WEBEX.replace(
        "[pbx]", '[[pbx]]\nname = "acme"'
    )
    assert error_of(tmp_path, text, {}) == (
        "[pbx.globex].client_secret: required with client_id (or env XFERD_PBX_CLIENT_SECRET)"
    )
    env = {"XFERD_PBX_GLOBEX_CLIENT_SECRET": "s", "XFERD_PBX_GLOBEX_REFRESH_TOKEN": "r"}
    globex = load(write(tmp_path, text), env).pbx_named("globex")
    assert globex is not None and globex.kind == "webex" and globex.refresh_token is not None


@pytest.mark.parametrize(
    ("text", "env", "problem"),
    [
        (
            INTEGRATION,
            {"XFERD_PBX_CLIENT_SECRET": "s", "XFERD_PBX_ACCESS_TOKEN": "a"},
            "[pbx].access_token: give either access_token or an integration's client_id/client_secret, "
            "not both (also set: client_id, client_secret)",
        ),
        (INTEGRATION, {}, "[pbx].client_secret: required with client_id (or env XFERD_PBX_CLIENT_SECRET)"),
        (
            WEBEX.replace('access_token = "wx-access-123"', ""),
            {},
            "[pbx].access_token: required (or an integration's client_id and client_secret)",
        ),
        (
            WEBEX.replace('access_token = "wx-access-123"', 'refresh_token = "r-123"'),
            {},
            "[pbx].client_id: required with refresh_token",
        ),
    ],
)
def test_webex_authentication_mistakes_name_the_key(
    tmp_path: Path, text: str, env: dict[str, str], problem: str
) -> None:
    assert error_of(tmp_path, text, env) == problem


# -- [store] url: PostgreSQL ---------------------------------------------------------------------

PG = "postgresql://xferd:pg-pass-123@db.example:5432/xferd"


def test_store_url_from_the_file_or_the_environment(tmp_path: Path) -> None:
    text = YEASTAR.replace('path = "state.sqlite3"', f'url = "{PG}"')
    config = load(write(tmp_path, text), {})
    assert config.store.url_value == PG
    assert "pg-pass-123" not in repr(config)  # a secret: the URL may hold the password
    # the environment wins, and replaces a SQLite path the file names
    config = load(write(tmp_path, YEASTAR), {"XFERD_STORE_URL": PG})
    assert config.store.url_value == PG
    assert load(write(tmp_path, YEASTAR), {}).store.url_value is None  # SQLite by default


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("mysql://u:p@h/db", "[store].url: a postgresql:// URL"),
        ("postgres://", "[store].url: a postgresql:// URL"),
        ("db.example:5432", "[store].url: a postgresql:// URL"),
    ],
)
def test_a_bad_store_url_names_the_key_not_the_value(tmp_path: Path, url: str, expected: str) -> None:
    message = error_of(tmp_path, YEASTAR.replace('path = "state.sqlite3"', f'url = "{url}"'))
    assert message.startswith(expected)
    assert url not in message


def test_store_path_and_url_together_is_a_mistake(tmp_path: Path) -> None:
    message = error_of(tmp_path, YEASTAR.replace('path = "state.sqlite3"', f'path = "x.db"\nurl = "{PG}"'))
    assert message == "[store].url: give either path (SQLite) or url (PostgreSQL), not both"
    assert "pg-pass-123" not in message
