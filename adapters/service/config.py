"""The service's TOML configuration (contract §2), validated before anything starts.

A config mistake should cost the admin one glance, not a stack trace: every
problem becomes a :class:`ConfigError` whose message is one line naming the
file, the key and what was expected.  Secrets are :class:`~pydantic.SecretStr`
so they cannot leak through ``repr`` or logs, and error messages never quote
the offending value (it might be a mistyped secret).
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StrictBool,
    StrictInt,
    ValidationError,
    field_validator,
    model_validator,
)

from adapters.service.roles import TOKEN_HASH_PATTERN, Role
from engine.model import Policy

#: Environment variables that override (or supply) secrets: (table, key) per variable.
#: With several ``[[pbx]]`` entries the PBX secrets are per entry:
#: ``XFERD_PBX_<NAME>_CLIENT_SECRET`` (see :func:`pbx_env_name`); the plain
#: ``XFERD_PBX_*`` names apply when exactly one PBX is configured.
SECRET_ENV: dict[str, tuple[str, str]] = {
    "XFERD_PBX_CLIENT_ID": ("pbx", "client_id"),  # not a secret: it goes with the client secret
    "XFERD_PBX_CLIENT_SECRET": ("pbx", "client_secret"),
    "XFERD_PBX_ACCESS_TOKEN": ("pbx", "access_token"),
    "XFERD_PBX_REFRESH_TOKEN": ("pbx", "refresh_token"),
    "XFERD_WEBHOOK_SECRET": ("pbx", "webhook_secret"),
    "XFERD_API_TOKEN": ("api", "token"),
    "XFERD_API_SESSION_SECRET": ("api", "session_secret"),
}
#: The PBX keys that may come from the environment, per ``[[pbx]]`` entry.
PBX_SECRET_KEYS: tuple[str, ...] = (
    "client_id",
    "client_secret",
    "access_token",
    "refresh_token",
    "webhook_secret",
)
#: The name a single ``[pbx]`` table (no ``name`` key) gets.
DEFAULT_PBX_NAME = "default"

NonEmpty = Annotated[str, Field(min_length=1)]
#: A PBX name: it appears in URLs (``?pbx=``), metrics and the store.
PbxName = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,31}$")]
Secret = Annotated[SecretStr, Field(min_length=1)]
# Strict floats still take TOML integers (``20``) but not strings (``"20"``).
Seconds = Annotated[float, Field(gt=0, strict=True)]


class ConfigError(Exception):
    """The config file cannot be used; ``str()`` is the one-line message for the admin."""


class _Table(BaseModel):
    # Attribute docstrings become the keys' descriptions: the configuration
    # reference in the docs is generated from these models (docsgen/config_ref.py).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _http_url(value: str) -> str:
    """An `http://` or `https://` URL (a trailing `/` is dropped)."""
    if not value.startswith(("http://", "https://")) or len(value.split("://", 1)[1]) == 0:
        raise ValueError("an http:// or https:// URL")
    return value.rstrip("/")


class PolicyConfig(_Table):
    """How the service drives a transfer by itself (contract §4); a request may override each key."""

    on_answer: Literal["complete", "threeway", "hold"] = "complete"
    """What to do once the target answers: complete the transfer, join all three (not on Webex),
    or nothing (an operator completes or aborts)."""
    answer_delay_s: Annotated[float, Field(ge=0, strict=True)] = 0.0
    """Seconds to wait after the target answers before applying `on_answer` (time for the target
    to hear who is calling)."""
    no_answer_timeout_s: Seconds = 20.0
    """The target must answer within this many seconds, else the consultation is aborted (and the
    next fallback number tried)."""
    on_transferor_hangup: Literal["complete", "abort"] = "complete"
    """What the transferor hanging up during the consultation means (Yeastar; on Webex it cannot be
    told apart from the target hanging up)."""
    fallback_numbers: tuple[NonEmpty, ...] = ()
    """Targets tried in turn, as new attempts of the same transfer, after no answer or busy."""

    def engine_policy(self) -> Policy:
        return Policy(
            on_answer=self.on_answer,
            answer_delay_s=float(self.answer_delay_s),
            no_answer_timeout_s=float(self.no_answer_timeout_s),
            on_transferor_hangup=self.on_transferor_hangup,
            fallback_numbers=self.fallback_numbers,
        )


class YeastarPbx(_Table):
    """A Yeastar P-Series PBX, reached through its OpenAPI (an API application on the PBX)."""

    kind: Literal["yeastar"]
    """The platform."""
    name: PbxName = DEFAULT_PBX_NAME
    """The PBX's name in URLs (`?pbx=`), resources, metrics and env variables; with several
    `[[pbx]]` entries each needs its own."""
    policy: PolicyConfig | None = None
    """Overrides of the top-level `[policy]` for this PBX's transfers (`[pbx.policy]`)."""
    base_url: NonEmpty
    """The PBX's web address, e.g. `https://192.168.5.150:8088` (`http://` allowed)."""
    client_id: NonEmpty
    """The Client ID of the API application (PBX: Integrations → API)."""
    client_secret: Secret
    """The Client Secret of the API application."""
    verify_tls: StrictBool = True
    """Verify the PBX's TLS certificate. Prefer `ca_file` to turning this off."""
    ca_file: Path | None = None
    """A PEM file of the CA (or the self-signed certificate) to trust for the PBX."""
    topics: tuple[StrictInt, ...] = (30011, 30012, 30015)
    """The event topics to subscribe to (30011 call status, 30012 call end, 30015 call failed)."""

    _url = field_validator("base_url")(_http_url)


class WebexPbx(_Table):
    """Webex Calling, acting for one Calling user: the owner of the access token."""

    kind: Literal["webex"]
    """The platform."""
    name: PbxName = DEFAULT_PBX_NAME
    """The PBX's name in URLs (`?pbx=`, `/v1/webhooks/webex/<name>`), resources, metrics and env
    variables; with several `[[pbx]]` entries each needs its own."""
    policy: PolicyConfig | None = None
    """Overrides of the top-level `[policy]` for this PBX's transfers (`[pbx.policy]`)."""
    base_url: NonEmpty = "https://webexapis.com/v1"
    """The Webex API's base address."""
    access_token: Secret | None = None
    """A static access token with scopes `spark:calls_read` and `spark:calls_write` (a personal access
    token lasts 12 hours: for a try-out). Give either this or the integration's `client_id`,
    `client_secret` (and `refresh_token`, or let `xferd webex authorize` store one)."""
    client_id: NonEmpty | None = None
    """The Webex integration's Client ID: its tokens renew themselves (no restart after 12 hours)."""
    client_secret: Secret | None = None
    """The Webex integration's Client Secret."""
    refresh_token: Secret | None = None
    """An integration refresh token to start from; the latest one Webex returns is kept in the store
    (and wins while it descends from this one). Optional once `xferd webex authorize` stored one."""
    webhook_secret: Secret
    """The secret webhook deliveries are signed with (`X-Spark-Signature`)."""
    events: Literal["webhook", "poll"] = "webhook"
    """How call events arrive: signed webhook deliveries (needs a public HTTPS address) or polling
    `GET /telephony/calls`."""
    public_url: NonEmpty | None = None
    """The public address Webex reaches the service at: set, the service registers its webhook
    at start-up and deletes it at shutdown; unset, register it yourself."""
    poll_interval_s: Seconds = 2.0
    """With `events = "poll"`: seconds between two reads of the user's calls (at least 0.1)."""
    # Optional: Webex call objects never carry the user's own number, so without it the
    # user's legs show number "" (extension requests still resolve: see the API).
    user_number: NonEmpty | None = None
    """The token owner's own number: shown as the transferor's number, and an `extension`
    naming anyone else is refused."""

    _url = field_validator("base_url", "public_url")(_http_url)

    @field_validator("poll_interval_s")
    @classmethod
    def _within_rate_limits(cls, value: float) -> float:
        """At least 0.1 seconds."""
        # Webex publishes no call-control rate limit (a 429 stretches the interval
        # anyway); the floor only keeps a typo such as 0.001 from hammering the API.
        if value < 0.1:
            raise ValueError("at least 0.1 seconds (Webex rate-limits the API)")
        return value

    @model_validator(mode="after")
    def _one_way_to_authenticate(self) -> WebexPbx:
        oauth = [
            key for key in ("client_id", "client_secret", "refresh_token") if getattr(self, key) is not None
        ]
        if self.access_token is not None and oauth:
            raise _KeyError(
                ("pbx", "access_token"),
                f"give either access_token or an integration's client_id/client_secret, not both "
                f"(also set: {', '.join(oauth)})",
            )
        if self.client_id is None and oauth:
            raise _KeyError(("pbx", "client_id"), f"required with {oauth[0]}")
        if self.access_token is None and self.client_id is None:
            raise _KeyError(
                ("pbx", "access_token"), "required (or an integration's client_id and client_secret)"
            )
        if self.client_id is not None and self.client_secret is None:
            raise _KeyError(
                ("pbx", "client_secret"), "required with client_id (or env XFERD_PBX_CLIENT_SECRET)"
            )
        return self

    @property
    def oauth(self) -> bool:
        """Tokens from an integration (renewing) rather than a static access token."""
        return self.client_id is not None


class UserConfig(_Table):
    """``[[api.users]]``: one person or program allowed to use the API.

    Only the token's hash is in the file (``xferd token new`` prints both),
    so the config file does not hold a usable credential.
    """

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}$")]
    """The user's name, as the audit log and `initiated_by` show it; unique."""
    role: Role
    """What the user may do: `viewer` < `operator` < `supervisor` < `admin`."""
    token_hash: Annotated[str, Field(pattern=TOKEN_HASH_PATTERN)]
    """The SHA-256 hash of the user's token, as `xferd token new` prints it; unique."""


class ApiConfig(_Table):
    """The control API (and the Webex webhook receiver)."""

    listen: NonEmpty = "127.0.0.1:8765"
    """`host:port` the control API listens on (`[::1]:8765` for IPv6; port 0: any free port)."""
    #: The single shared token of earlier versions: it acts as a user named ``admin`` with role admin.
    token: Secret | None = None
    """A bearer token that acts as the user `admin` (role admin). Required, unless `[[api.users]]`
    are configured, when `listen` is not a loopback address."""
    users: tuple[UserConfig, ...] = ()
    """The users allowed to use the API, each with a role and a token (`[[api.users]]`)."""
    session_secret: Secret | None = None
    """Signs the console's session cookies (`XFERD_API_SESSION_SECRET`). Unset: a random key per
    process, so sessions end when the service restarts; instances that share one address (HA)
    need the same secret to accept each other's sessions."""
    session_ttl_s: Seconds = 28800.0
    """How long a console login lasts (seconds; default 8 hours); then the page asks again."""

    @field_validator("users")
    @classmethod
    def _unique_users(cls, users: tuple[UserConfig, ...]) -> tuple[UserConfig, ...]:
        """Each user's `name` and `token_hash` are unique."""
        names = [user.name for user in users]
        hashes = [user.token_hash for user in users]
        if len(set(names)) != len(names):
            raise ValueError("user names must be unique")
        if len(set(hashes)) != len(hashes):
            raise ValueError("two users have the same token_hash; give each user a token of its own")
        return users

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        """`host:port`, the port 0–65535."""
        split_listen(value)
        return value

    @property
    def host(self) -> str:
        return split_listen(self.listen)[0]

    @property
    def port(self) -> int:
        return split_listen(self.listen)[1]


class StoreConfig(_Table):
    """Where transfers, idempotency keys and the audit log are kept."""

    path: Path = Path("xferd.sqlite3")
    """The SQLite file (relative paths: next to the config file); state survives restarts."""


class RecordConfig(_Table):
    """``[record] path = "incident.jsonl"``: record this run as a replayable scenario."""

    path: Path | None = None
    """Record this run to this JSONL scenario file (one Yeastar PBX only; relative paths: next to
    the config file)."""


class RulesConfig(_Table):
    """``[rules] path = "rules.toml"``: the routing rules file (see adapters.service.rules)."""

    path: Path | None = None


PbxTable = Annotated[YeastarPbx | WebexPbx, Field(discriminator="kind")]


class Config(_Table):
    """The whole file.  ``pbx`` is one ``[pbx]`` table or several ``[[pbx]]``
    entries; either way it is held as a tuple (one PBX: named ``default``
    unless it says otherwise)."""

    pbx: tuple[PbxTable, ...]
    """The PBX(s) to drive: one `[pbx]` table or several `[[pbx]]` entries."""
    api: ApiConfig = ApiConfig()
    """The control API."""
    store: StoreConfig = StoreConfig()
    """Persistence."""
    policy: PolicyConfig = PolicyConfig()
    """Defaults for every transfer (a PBX's `[pbx.policy]` and each request may override them)."""
    record: RecordConfig = RecordConfig()
    """Recording the run as a replayable scenario."""
    rules: RulesConfig = RulesConfig()
    """Automated call-routing rules."""

    @model_validator(mode="before")
    @classmethod
    def _one_or_many(cls, data: object) -> object:
        # ``[pbx]`` (a table) and ``Config(pbx=YeastarPbx(...))`` mean a list of one.
        if isinstance(data, dict) and isinstance(data.get("pbx"), dict | BaseModel):
            data = {**data, "pbx": [data["pbx"]]}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        """- At least one PBX; each PBX's `name` unique.
        - `[record].path` only with exactly one PBX, of kind `yeastar`.
        - `[api].token` (or `[[api.users]]`) when `[api].listen` is not a loopback address.
        - `on_answer = "threeway"` never applies to a Webex PBX (`[policy]` or its `[pbx.policy]`).
        """
        if not self.pbx:
            raise _KeyError(("pbx",), "at least one PBX")
        names = [pbx.name for pbx in self.pbx]
        for index, name in enumerate(names):
            if name in names[:index]:
                raise _KeyError(("pbx", str(index), "name"), f"unique (two PBXs are named {name!r})")
        if self.record.path is not None and len(self.pbx) != 1:
            raise _KeyError(("record", "path"), "only with one [pbx] (a recording holds one PBX's events)")
        if self.api.token is None and not self.api.users and not is_loopback(self.api.host):
            raise _KeyError(("api", "token"), "required when [api].listen is not a loopback address")
        for index, pbx in enumerate(self.pbx):
            if pbx.kind == "webex" and self.policy_of(pbx).on_answer == "threeway":
                where = ("policy", "on_answer") if pbx.policy is None else ("pbx", str(index), "policy")
                raise _KeyError(where, "'complete' or 'hold' (Webex has no three-way calls)")
        return self

    def policy_of(self, pbx: YeastarPbx | WebexPbx) -> PolicyConfig:
        """The policy a PBX's transfers start from: ``[policy]`` with the PBX's own overrides."""
        if pbx.policy is None:
            return self.policy
        overrides = pbx.policy.model_dump(exclude_unset=True)
        return self.policy.model_copy(update=overrides)

    def pbx_named(self, name: str) -> YeastarPbx | WebexPbx | None:
        return next((pbx for pbx in self.pbx if pbx.name == name), None)


class _KeyError(ValueError):
    """A cross-field problem that belongs to one key (so the message can name it)."""

    def __init__(self, loc: tuple[str, ...], expected: str) -> None:
        super().__init__(expected)
        self.loc = loc
        self.expected = expected


def split_listen(listen: str) -> tuple[str, int]:
    """``"127.0.0.1:8765"`` / ``"[::1]:8765"`` → (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError("host:port, e.g. 127.0.0.1:8765")
    return host.removeprefix("[").removesuffix("]"), int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may well resolve to a public address


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read, merge env secrets, validate.  Raises :class:`ConfigError` (one line)."""
    environ = os.environ if environ is None else environ
    path = Path(path)
    prefix = f"config error in {path}"
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{prefix}: cannot read the file: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{prefix}: not valid TOML: {exc}") from None
    _merge_env(data, environ)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{prefix}: {describe(exc, data)}") from None
    # Relative paths mean "next to the config file", whatever the cwd of the service.
    if not config.store.path.is_absolute():
        config = config.model_copy(update={"store": StoreConfig(path=path.parent / config.store.path)})
    if config.record.path is not None and not config.record.path.is_absolute():
        config = config.model_copy(update={"record": RecordConfig(path=path.parent / config.record.path)})
    if config.rules.path is not None and not config.rules.path.is_absolute():
        config = config.model_copy(update={"rules": RulesConfig(path=path.parent / config.rules.path)})
    return config


def pbx_env_name(name: str, key: str) -> str:
    """``XFERD_PBX_<NAME>_<KEY>``: the variable that supplies ``key`` of the PBX named ``name``."""
    return f"XFERD_PBX_{re.sub(r'[^A-Z0-9]', '_', name.upper())}_{key.upper()}"


def _merge_env(data: dict[str, Any], environ: Mapping[str, str]) -> None:
    """Put secrets from the environment into ``data`` (they win over the file)."""
    pbx = data.get("pbx")
    entries = [pbx] if isinstance(pbx, dict) else pbx if isinstance(pbx, list) else []
    for var, (table, key) in SECRET_ENV.items():
        value = environ.get(var)
        if not value:
            continue
        if table == "pbx":
            # The plain names mean "the one PBX"; with several, each has its own.
            if len(entries) == 1 and isinstance(entries[0], dict) and _has_key(entries[0], key):
                entries[0][key] = value
        elif isinstance(data.get(table, {}), dict):
            data.setdefault(table, {})[key] = value
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        name = entry.get("name", DEFAULT_PBX_NAME)
        for key in PBX_SECRET_KEYS:
            value = environ.get(pbx_env_name(str(name), key))
            if value and _has_key(entry, key):
                entry[key] = value


def _has_key(entry: dict[str, Any], key: str) -> bool:
    """Whether a PBX table of ``entry``'s kind takes ``key`` (an env secret must not
    turn into an "unknown key" error for the other platform)."""
    models: dict[str, type[BaseModel]] = {"yeastar": YeastarPbx, "webex": WebexPbx}
    model = models.get(str(entry.get("kind")))
    return model is None or key in model.model_fields


def describe(exc: ValidationError, data: Mapping[str, Any] | None = None) -> str:
    """The first problem of ``exc`` as ``[table].key: expected``, never quoting the input.

    ``data`` (the parsed file) lets a problem in one of several ``[[pbx]]``
    entries be named by the entry's ``name``.
    """
    errors = exc.errors(include_url=False, include_input=False)
    first = errors[0]
    loc = tuple(str(part) for part in first["loc"])
    kind = first["type"]
    if kind == "missing":
        expected = "required"
    elif kind == "extra_forbidden":
        expected = "unknown key"
    elif kind == "union_tag_invalid":
        expected = "'yeastar' or 'webex'"
        loc = (*loc, "kind")
    elif kind == "union_tag_not_found":
        expected = "required ('yeastar' or 'webex')"
        loc = (*loc, "kind")
    elif kind == "value_error":
        ctx_error = first.get("ctx", {}).get("error")
        if isinstance(ctx_error, _KeyError):
            # A PBX table's own check names its key; keep which entry it is in.
            inner = ctx_error.loc[:1] == ("pbx",) and not (
                len(ctx_error.loc) > 1 and ctx_error.loc[1].isdigit()
            )
            entry = loc[1:2] if inner and len(loc) > 1 and loc[0] == "pbx" and loc[1].isdigit() else ()
            loc, expected = (*ctx_error.loc[:1], *entry, *ctx_error.loc[1:]), ctx_error.expected
        else:
            expected = str(ctx_error) if ctx_error is not None else first["msg"]
    else:
        expected = first["msg"].replace("Input should be", "should be")
    more = f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})" if len(errors) > 1 else ""
    return f"{_where(_pbx_loc(loc, data))}: {expected}{more}"


def _pbx_loc(loc: tuple[str, ...], data: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``pbx`` is held as a list: ``[pbx].0.x`` reads ``[pbx].x`` for the one-table
    form and ``[pbx.acme].x`` for a ``[[pbx]]`` entry named acme; the tag a
    discriminated union adds (``[pbx].yeastar.client_id``) is dropped."""
    if len(loc) > 1 and loc[0] == "pbx" and loc[1].isdigit():
        entries = (data or {}).get("pbx")
        if isinstance(entries, list):
            index = int(loc[1])
            entry = entries[index] if index < len(entries) else {}
            name = entry.get("name") if isinstance(entry, dict) else None
            loc = (f"pbx.{name}" if isinstance(name, str) and name else f"pbx.{index + 1}", *loc[2:])
        else:
            loc = (loc[0], *loc[2:])
    if len(loc) > 1 and loc[0].startswith("pbx") and loc[1] in ("yeastar", "webex"):
        loc = (loc[0], *loc[2:])
    return loc


def _where(loc: tuple[str, ...]) -> str:
    if not loc:
        return "top level"
    head, *rest = loc
    return f"[{head}]" + "".join(f"[{part}]" if part.isdigit() else f".{part}" for part in rest)
