"""Login and tokens: an AUTH_TOKEN credential exchanged for a CLIENT Session, kept fresh with its refresh token.

login(token) ─POST /v1/client/login─▶ TokenGrant ─▶ LoginState (0600, state.py)
signed_in()  ─▶ UserApi with a Bearer token that is valid for at least a minute (refreshed if not)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from wardgate.client.errors import ClientError
from wardgate.client.state import LoginState, StateFiles
from wardgate.client.user_api import UserApi

REFRESH_MARGIN = timedelta(seconds=60)


def not_logged_in() -> ClientError:
    return ClientError("not logged in: run `wardgate login --domain DOMAIN` first")


async def login(
    files: StateFiles, domain: str, auth_token: str, address: str | None, ca_file: str | None
) -> LoginState:
    """Exchange `auth_token` for a Session and store it; `ca_file` is an absolute path (or None: system CAs)."""
    async with UserApi(domain, address, ca_file) as api:
        grant = await api.login(auth_token)
    assert grant.refresh_token is not None
    state = LoginState(
        domain=domain,
        address=address,
        ca_file=ca_file,
        user=grant.user,
        session=grant.session,
        session_expires_at=grant.session_expires_at,
        access_token=grant.access_token,
        access_token_expires_at=grant.access_token_expires_at,
        refresh_token=grant.refresh_token,
    )
    files.write_login(state)
    return state


async def refresh_if_due(api: UserApi, files: StateFiles, state: LoginState) -> LoginState:
    """`state` with an access token valid for at least REFRESH_MARGIN; `api.token` set to it."""
    if state.access_token_expires_at - datetime.now(UTC) < REFRESH_MARGIN:
        grant = await api.refresh(state.refresh_token)
        state = state.model_copy(
            update={"access_token": grant.access_token, "access_token_expires_at": grant.access_token_expires_at}
        )
        files.write_login(state)
    api.token = state.access_token
    return state


@asynccontextmanager
async def signed_in(files: StateFiles) -> AsyncIterator[tuple[UserApi, LoginState]]:
    state = files.read_login()
    if state is None:
        raise not_logged_in()
    async with UserApi(state.domain, state.address, state.ca_file) as api:
        state = await refresh_if_due(api, files, state)
        yield api, state
