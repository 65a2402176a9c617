"""Token endpoints, at the paths djangorestframework-simplejwt users know."""

from __future__ import annotations

import json
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import ValidationError
from starlette.datastructures import MutableHeaders
from starlette.types import Message, Receive, Scope, Send

from app.dependencies import BackendsDep, ClientDep, DbSession
from app.errors import UnsupportedGrantType
from app.schemas.common import problem_responses
from app.schemas.token import (
    Empty,
    LoginRequest,
    RefreshRequest,
    RevokeRequest,
    TokenPair,
    VerifyRequest,
)
from app.services import auth

# Tokens are credentials: no browser, proxy or CDN may keep a copy of a response carrying one.
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


class NoStoreRoute(APIRoute):
    """A route whose every response, errors included, is `Cache-Control: no-store`."""

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                MutableHeaders(scope=message).update(NO_STORE)
            await send(message)

        await super().handle(scope, receive, send_no_store)


router = APIRouter(prefix="/api/token", tags=["tokens"], route_class=NoStoreRoute)

FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


async def login_request(request: Request) -> LoginRequest:
    """The credentials, from a JSON body or an OAuth2 password-flow form (Swagger's Authorize)."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    data: Any
    if content_type in FORM_TYPES:
        form = await request.form()
        if form.get("grant_type") not in (None, "", "password"):
            raise UnsupportedGrantType
        data = {k: form.get(k) for k in ("username", "password") if k in form}
    else:
        body = await request.body()
        try:
            data = json.loads(body) if body else None
        except (ValueError, RecursionError) as exc:
            raise RequestValidationError(
                [{"loc": ("body",), "msg": "Invalid JSON", "type": "json_invalid"}]
            ) from exc
    try:
        return LoginRequest.model_validate(data)
    except ValidationError as exc:
        raise RequestValidationError(
            [{**e, "loc": ("body", *e["loc"])} for e in exc.errors(include_url=False)]
        ) from exc


# Documented as JSON only: generated clients handle one body type best. The OAuth2 form works
# too, and Swagger's Authorize sends it to the security scheme's `tokenUrl`.
_LOGIN_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {"$ref": "#/components/schemas/LoginRequest"}},
    },
}


@router.post(
    "",
    operation_id="token-obtain",
    summary="Log in",
    description="Exchange a username (or e-mail) and password for an access and refresh token "
    "pair. Accepts JSON or the OAuth2 password-flow form "
    "(`application/x-www-form-urlencoded`: `grant_type=password`, `username`, `password`). "
    "Unknown users and wrong passwords get the same answer. Too many attempts answer 429 with "
    "`Retry-After`: `rate_limited` per client address, `login_locked` after failed logins of "
    "this account from this address, `login_throttled` while the account's ceiling of failures "
    "from all addresses is full and this address already failed.",
    response_model=TokenPair,
    responses=problem_responses(400, 401, 413, 422, 429),  # 400: a form with another grant_type
    openapi_extra={"requestBody": _LOGIN_BODY},
)
async def login(
    credentials: Annotated[LoginRequest, Depends(login_request)],
    db: DbSession,
    backends: BackendsDep,
    client: ClientDep,
) -> TokenPair:
    user = await auth.authenticate(
        db,
        backends,
        login=credentials.username,
        password=credentials.password,
        client=client,
    )
    return await auth.start_session(db, backends, user=user, client=client)


# `/api/token/` answers too, without a redirect (simplejwt's path has the slash).
router.add_api_route(
    "/",
    login,
    methods=["POST"],
    response_model=TokenPair,
    include_in_schema=False,
)


@router.post(
    "/refresh",
    operation_id="token-refresh",
    summary="Refresh tokens",
    description="Rotate: the refresh token is spent and a new pair returned. Presenting a spent "
    "refresh token again ends the whole session (reuse detection).",
    response_model=TokenPair,
    responses=problem_responses(401, 413, 422, 503),
)
async def refresh(body: RefreshRequest, db: DbSession, backends: BackendsDep) -> TokenPair:
    return await auth.refresh(db, backends, refresh_token=body.refresh_token)


@router.post(
    "/verify",
    operation_id="token-verify",
    summary="Verify a token",
    description="`200 {}` when the token (access or refresh) is valid and its session live; "
    "401 otherwise.",
    response_model=Empty,
    responses=problem_responses(401, 413, 422),
)
async def verify(body: VerifyRequest, db: DbSession, backends: BackendsDep) -> Empty:
    await auth.verify(db, backends, token=body.token)
    return Empty()


@router.post(
    "/revoke",
    operation_id="token-revoke",
    summary="Log out",
    description="End the session of this refresh token. Its access tokens are refused from the "
    "next request on, by every API process. 503 `revocation_pending`: the session has ended, "
    "but Redis could not be told in time (`REDIS_REVOCATION_WAIT_SECONDS`); send it again.",
    status_code=status.HTTP_204_NO_CONTENT,
    responses=problem_responses(401, 413, 422, 503),
)
async def revoke(body: RevokeRequest, db: DbSession, backends: BackendsDep) -> Response:
    await auth.revoke(db, backends, refresh_token=body.refresh_token)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
