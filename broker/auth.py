"""Teams, API keys and roles: who may call the API and as which team.

A key is `gpb_` + 43 URL-safe characters (256 random bits). The store keeps only its SHA-256
(a fast hash is safe for keys that random) and its first `PREFIX_LEN` characters, which
find the row and are what listings show; the plaintext is returned once, by
`create_api_key`. `verify_key` looks the row up by prefix and compares hashes in constant
time; revoked keys fail. Roles are ordered viewer < member < admin: a route that needs
`member` admits admins too. No HTTP here: `broker.api.deps` maps this onto requests.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import select, update
from sqlmodel import Session, col

from broker.domain import Clock, utcnow
from broker.models import ApiKey, Team

#: Every key starts with this, so a leaked one is recognisable (secret scanners, logs).
KEY_PREFIX = "gpb_"
#: Characters of the key stored in clear to find its row: `gpb_` + 8 random characters.
PREFIX_LEN = 12
#: `last_used_at` is written at most this often per key (a read must not write every time).
LAST_USED_RESOLUTION = timedelta(minutes=1)
#: Longer "keys" are not ours; refuse them before hashing.
MAX_KEY_LEN = 128
MAX_TEAM_NAME_LEN = 128
MAX_KEY_NAME_LEN = 128


class Role(StrEnum):
    VIEWER = "viewer"
    MEMBER = "member"
    ADMIN = "admin"

    @property
    def rank(self) -> int:
        return _RANK[self]

    def allows(self, needed: Role) -> bool:
        """Whether a key of this role may do what `needed` may (admin ⊇ member ⊇ viewer)."""
        return self.rank >= needed.rank


_RANK = {Role.VIEWER: 0, Role.MEMBER: 1, Role.ADMIN: 2}


class AuthError(ValueError):
    """A bad team name, key label or revoke target; the message says which."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's row id and prefix, its team and its role."""

    key_id: int
    prefix: str
    team_id: int
    team: str
    role: Role


@dataclass(frozen=True, slots=True)
class CreatedKey:
    """A new key: `key` is the plaintext, shown to the user once and never stored."""

    key: str
    prefix: str
    key_id: int
    team_id: int
    team: str
    role: Role
    name: str | None


def hash_key(key: str) -> str:
    """SHA-256 hex of a key, as stored in `api_keys.key_hash`."""
    return hashlib.sha256(key.encode()).hexdigest()


def _team_name(name: str) -> str:
    clean = name.strip()
    if not clean:
        raise AuthError("team name must not be empty")
    if len(clean) > MAX_TEAM_NAME_LEN:
        raise AuthError(f"team name is longer than {MAX_TEAM_NAME_LEN} characters")
    return clean


def get_team(session: Session, name: str) -> Team | None:
    stmt = select(Team).where(col(Team.name) == name.strip())
    return session.execute(stmt).scalars().first()


def get_or_create_team(session: Session, name: str, *, clock: Clock = utcnow) -> Team:
    """The team called `name` (surrounding blanks ignored), created when missing."""
    clean = _team_name(name)
    team = get_team(session, clean)
    if team is None:
        team = Team(name=clean, created_at=clock())
        session.add(team)
        session.flush()
    return team


def create_api_key(
    session: Session,
    team: str,
    role: Role | str = Role.MEMBER,
    *,
    name: str | None = None,
    clock: Clock = utcnow,
    expires_in: timedelta | None = None,
) -> CreatedKey:
    """A new key for `team` (created when missing) in the caller's transaction; with
    `expires_in`, refused from that long after now.

    Raises:
        AuthError: empty or over-long team name or label; unknown role; a non-positive
            `expires_in`.
    """
    if expires_in is not None and expires_in <= timedelta(0):
        raise AuthError("expiry must be in the future (e.g. 90d, 12h)")
    try:
        role = Role(role)
    except ValueError:
        raise AuthError(
            f"unknown role {role!r}; roles: {', '.join(r.value for r in Role)}"
        ) from None
    if name is not None:
        name = name.strip() or None
        if name is not None and len(name) > MAX_KEY_NAME_LEN:
            raise AuthError(f"key name is longer than {MAX_KEY_NAME_LEN} characters")
    row_team = get_or_create_team(session, team, clock=clock)
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    assert row_team.id is not None
    row = ApiKey(
        team_id=row_team.id,
        role=role.value,
        prefix=key[:PREFIX_LEN],
        key_hash=hash_key(key),
        name=name,
        created_at=clock(),
        expires_at=clock() + expires_in if expires_in is not None else None,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    return CreatedKey(
        key=key,
        prefix=row.prefix,
        key_id=row.id,
        team_id=row_team.id,
        team=row_team.name,
        role=role,
        name=name,
    )


_DURATION = re.compile(r"^\s*(\d{1,6})\s*([dhm])\s*$")


def parse_duration(text: str) -> timedelta:
    """`90d`, `12h` or `30m` as a timedelta.

    Raises:
        AuthError: not one of those forms.
    """
    m = _DURATION.match(text)
    if not m or int(m.group(1)) == 0:
        raise AuthError(
            f"bad duration {text!r}: write a positive number of days, hours or "
            "minutes, e.g. 90d, 12h, 30m"
        )
    unit = {"d": "days", "h": "hours", "m": "minutes"}[m.group(2)]
    return timedelta(**{unit: int(m.group(1))})


def verify_key(session: Session, presented: str, *, clock: Clock = utcnow) -> Principal | None:
    """The principal of a presented key, or None when it is unknown, malformed, revoked or
    expired.

    Stamps `last_used_at` (at most once per `LAST_USED_RESOLUTION`) in the caller's
    transaction.
    """
    if not presented.startswith(KEY_PREFIX) or not (PREFIX_LEN < len(presented) <= MAX_KEY_LEN):
        return None
    digest = hash_key(presented)
    rows = session.execute(
        select(ApiKey, col(Team.name))
        .join(Team, col(Team.id) == col(ApiKey.team_id))
        .where(col(ApiKey.prefix) == presented[:PREFIX_LEN])
    ).all()
    found: tuple[ApiKey, str] | None = None
    for key_row, team_name in rows:
        if hmac.compare_digest(key_row.key_hash, digest):
            found = (key_row, team_name)
    if found is None:
        return None
    row, team_name = found
    if row.revoked_at is not None:
        return None
    now = clock()
    if row.expires_at is not None and now >= row.expires_at:
        return None
    if row.last_used_at is None or now - row.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(col(ApiKey.id) == row.id).values(last_used_at=now))
    assert row.id is not None
    return Principal(
        key_id=row.id, prefix=row.prefix, team_id=row.team_id, team=team_name, role=Role(row.role)
    )


def list_api_keys(session: Session, team: str | None = None) -> list[dict[str, Any]]:
    """Every key (of `team`), oldest first, without any secret: prefix, team, role, name,
    created_at, last_used_at, expires_at, revoked_at."""
    stmt = (
        select(ApiKey, col(Team.name))
        .join(Team, col(Team.id) == col(ApiKey.team_id))
        .order_by(col(ApiKey.id))
    )
    if team is not None:
        stmt = stmt.where(col(Team.name) == team.strip())
    return [
        {
            "prefix": row.prefix,
            "team": team_name,
            "role": row.role,
            "name": row.name,
            "created_at": row.created_at,
            "last_used_at": row.last_used_at,
            "expires_at": row.expires_at,
            "revoked_at": row.revoked_at,
        }
        for row, team_name in session.execute(stmt).all()
    ]


def revoke_api_key(session: Session, prefix: str, *, clock: Clock = utcnow) -> tuple[ApiKey, bool]:
    """Revoke the key with this prefix; returns the row and whether it was revoked now
    (False: it already was).

    Raises:
        AuthError: no key has this prefix, or (vanishingly unlikely) several do.
    """
    prefix = prefix.strip()
    rows = session.execute(select(ApiKey).where(col(ApiKey.prefix) == prefix)).scalars().all()
    if not rows:
        raise AuthError(f"no API key with prefix {prefix!r} (`broker apikey list` shows them)")
    if len(rows) > 1:
        raise AuthError(f"{len(rows)} keys share the prefix {prefix!r}; revoke refused")
    row = rows[0]
    if row.revoked_at is not None:
        return row, False
    row.revoked_at = clock()
    session.add(row)
    session.flush()
    return row, True
