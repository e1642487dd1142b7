"""What routes declare to get their inputs: the session, settings, clock and the caller.

    def read_things(session: SessionDep, principal: CurrentPrincipal) -> ...

`create_app` keeps the engine, settings and clock on `app.state`; these dependencies read
them from there, so tests swap them by building the app with their own (or through
`app.dependency_overrides`). Sessions are one transaction per request (`session_scope`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Engine
from sqlmodel import Session

from broker.api.errors import forbidden, unauthenticated
from broker.auth import Principal, Role, verify_key
from broker.config import Settings
from broker.db import session_scope
from broker.domain import Clock


def get_engine(request: Request) -> Engine:
    engine: Engine = request.app.state.engine
    return engine


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_clock(request: Request) -> Clock:
    clock: Clock = request.app.state.clock
    return clock


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
ClockDep = Annotated[Clock, Depends(get_clock)]


def get_db(engine: EngineDep) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope(engine) as session:
        yield session


#: `scope="function"`: the commit happens before the response is sent, so a failed commit is
#: an error answer, and a client that reads right after its write sees it.
SessionDep = Annotated[Session, Depends(get_db, scope="function")]

bearer = HTTPBearer(
    auto_error=False,
    scheme_name="ApiKey",
    description="An API key from `broker apikey create`: `Authorization: Bearer gpb_...`.",
)


def get_principal(
    request: Request,
    engine: EngineDep,
    clock: ClockDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> Principal:
    """The caller of the request, from `Authorization: Bearer <key>`; 401 otherwise.

    Runs in its own short transaction, so `last_used_at` is stamped even if the route fails.
    """
    if credentials is None:
        raise unauthenticated(
            "missing API key: send the header `Authorization: Bearer <key>` "
            "(`broker apikey create` makes one)"
        )
    with session_scope(engine) as session:
        principal = verify_key(session, credentials.credentials, clock=clock)
    if principal is None:
        raise unauthenticated("invalid or revoked API key")
    request.app.state.rate_limiter.check(principal.key_id)
    return principal


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require_role(role: Role | str) -> Callable[[Principal], Principal]:
    """A dependency admitting keys of `role` or above (viewer < member < admin)::

    @router.post("/x", dependencies=[Depends(require_role("admin"))])
    """
    needed = Role(role)

    def check(principal: CurrentPrincipal) -> Principal:
        if not principal.role.allows(needed):
            raise forbidden(
                f"this needs the role {needed.value} or above; your key has the role "
                f"{principal.role.value}",
                {"required_role": needed.value, "role": principal.role.value},
            )
        return principal

    return check
