"""Cursor pagination for every list: `?limit=` (1..500, default 50) and `?cursor=`.

A cursor is opaque to clients: base64url (unpadded) of a small JSON array holding the sort
key and id of the last item of the page, tagged with the list it belongs to, so a cursor of
one list is refused by another. A list answers `{"data": [...], "next_cursor": str | null}`;
`next_cursor` is null on the last page. Keyset, not offset: a page costs the same wherever
it is, and a row inserted meanwhile never shifts the next page.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from typing import Annotated, Any, Generic, TypeVar

from fastapi import Path, Query
from pydantic import BaseModel, Field

from broker.api.errors import ApiError

DEFAULT_LIMIT = 50
MAX_LIMIT = 500
MAX_CURSOR_LEN = 2048
#: Ids are 64-bit signed on PostgreSQL and SQLite.
MAX_ID = 2**63 - 1
#: Path ids: positive and within a BIGINT, so no input reaches the database out of range.
RequestId = Annotated[int, Path(ge=1, le=MAX_ID, description="A capacity request id.")]
ReservationId = Annotated[int, Path(ge=1, le=MAX_ID, description="A reservation id.")]
PollId = Annotated[int, Path(ge=1, le=MAX_ID, description="A poll id.")]
SubscriptionId = Annotated[int, Path(ge=1, le=MAX_ID, description="A subscription id.")]

LimitQuery = Annotated[
    int,
    Query(ge=1, le=MAX_LIMIT, description=f"Items per page (1..{MAX_LIMIT})."),
]
CursorQuery = Annotated[
    str | None,
    Query(
        max_length=MAX_CURSOR_LEN,
        description="`next_cursor` of the previous page; omit for the first page.",
    ),
]

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    """One page of a list."""

    data: list[T]
    next_cursor: str | None = Field(
        description="Pass as `cursor` for the next page; null on the last page."
    )


def encode_cursor(kind: str, *key: str | int) -> str:
    raw = json.dumps([kind, *key], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def invalid_cursor(reason: str = "it was not issued by this list") -> ApiError:
    return ApiError(
        400,
        "invalid_cursor",
        f"invalid cursor: {reason}; pass the next_cursor of the previous page unchanged, "
        "or omit cursor to start again",
    )


def decode_cursor(cursor: str, kind: str, types: Sequence[type]) -> list[Any]:
    """The key a cursor of list `kind` holds, checked against `types` (str or int).

    Raises:
        ApiError: 400 `invalid_cursor` for anything this module did not issue.
    """
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        raw = base64.b64decode(padded.encode("ascii"), altchars=b"-_", validate=True)
        value = json.loads(raw)
    except (ValueError, UnicodeError, binascii.Error):
        raise invalid_cursor("it is not a cursor") from None
    if (
        not isinstance(value, list)
        or len(value) != len(types) + 1
        or value[0] != kind
        or not all(
            isinstance(v, t) and not isinstance(v, bool)
            for v, t in zip(value[1:], types, strict=True)
        )
    ):
        raise invalid_cursor()
    if any(isinstance(v, int) and not 0 <= v <= MAX_ID for v in value[1:]):
        raise invalid_cursor("it is out of range")
    return value[1:]


R = TypeVar("R")


def id_page(
    kind: str, cursor: str | None, limit: int, fetch: Callable[[int | None, int], list[R]]
) -> tuple[list[R], str | None]:
    """One page of an id-ordered list: `fetch(after_id, n)` returns up to n rows after the
    cursor's id; one row more than `limit` is asked for to know whether a next page exists.
    Returns the rows and the next cursor (None on the last page)."""
    after = int(decode_cursor(cursor, kind, [int])[0]) if cursor else None
    rows = fetch(after, limit + 1)
    if len(rows) <= limit:
        return rows, None
    rows = rows[:limit]
    return rows, encode_cursor(kind, getattr(rows[-1], "id", None) or 0)
