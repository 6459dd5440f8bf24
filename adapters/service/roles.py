"""Users and roles: who may do what through the control API.

Theory of operation
===================

Every request to the control API is made by a *principal*: a named user
with one role.  Roles are ordered, each including the ones below it:

==============  =============================================================
role            may
==============  =============================================================
``viewer``      read: transfers, calls, the live stream, metrics, health
``operator``    … and start transfers and operate them (complete, abort,
                swap, threeway)
``supervisor``  … and act on calls (listen/whisper/barge, park, hang up) and
                read the audit log
``admin``       … and administer the service (reload rules)
==============  =============================================================

Users are configured in ``[[api.users]]`` with a name, a role and the
SHA-256 hash of their token (``xferd token new`` prints a fresh token and its
hash).  Only the hash is kept, so the config file holds no usable
credential.  A token is 32 random bytes: hashing it once is enough (there is
no dictionary to attack), and looking the hash up in a dict is not a timing
leak (the attacker does not control the hash of what they send).

The single ``[api].token`` of earlier versions keeps working: it is the
user ``admin`` with role ``admin``.  With neither a token nor users the API
is open — allowed only on a loopback address (see the config) — and every
caller is ``anonymous`` with role ``admin``.

Role checks are made by the API on every request (:func:`allows`), never
only by hiding buttons in the console.  Every state-changing request is
recorded with its principal in the audit log (:mod:`adapters.service.audit`).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal, TypeAlias

Role: TypeAlias = Literal["viewer", "operator", "supervisor", "admin"]
#: Lowest to highest; a role may do everything the roles before it may.
ROLES: tuple[Role, ...] = ("viewer", "operator", "supervisor", "admin")
_RANK = {role: rank for rank, role in enumerate(ROLES)}
TOKEN_HASH_PATTERN = r"^sha256:[0-9a-f]{64}$"


def allows(role: Role, needed: Role) -> bool:
    """Whether ``role`` includes ``needed``."""
    return _RANK[role] >= _RANK[needed]


def hash_token(token: str) -> str:
    """The form stored in ``[[api.users]].token_hash``."""
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def new_token() -> tuple[str, str]:
    """A fresh token and its hash."""
    token = secrets.token_urlsafe(32)
    return token, hash_token(token)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who made a request: ``via`` is ``token``, ``session`` or ``open`` (no auth configured)."""

    name: str
    role: Role
    via: str = "token"

    def allows(self, needed: Role) -> bool:
        return allows(self.role, needed)


@dataclass(frozen=True, slots=True)
class User:
    name: str
    role: Role
    token_hash: str


ANONYMOUS = Principal("anonymous", "admin", "open")


class Users:
    """The configured users, looked up by token."""

    def __init__(self, users: Iterable[User], admin_token: str | None = None) -> None:
        self._by_hash: dict[str, User] = {}
        for user in users:
            self._by_hash[user.token_hash] = user
        self._admin_token = admin_token
        self._admin_hash = hash_token(admin_token) if admin_token is not None else None
        #: No token and no users: the API is open (loopback only, enforced by the config).
        self.open = admin_token is None and not self._by_hash

    def by_token(self, token: str) -> Principal | None:
        """The principal ``token`` belongs to, or None."""
        if self.open:
            return ANONYMOUS
        if not token:
            return None
        if self._admin_token is not None and hmac.compare_digest(token.encode(), self._admin_token.encode()):
            return Principal("admin", "admin")
        user = self._by_hash.get(hash_token(token))
        return Principal(user.name, user.role) if user is not None else None

    def by_hash(self, token_hash: str) -> Principal | None:
        """The principal whose token hashes to ``token_hash`` (a console session keeps the hash,
        never the token: changing a user's token ends their sessions)."""
        if self.open:
            return ANONYMOUS
        if self._admin_hash is not None and hmac.compare_digest(token_hash, self._admin_hash):
            return Principal("admin", "admin")
        user = self._by_hash.get(token_hash)
        return Principal(user.name, user.role) if user is not None else None

    def names(self) -> list[str]:
        return sorted(user.name for user in self._by_hash.values())
