from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from app.schemas.common import RequestModel, example

MAX_TOKEN_LENGTH = 4096


class LoginRequest(RequestModel):
    model_config = example({"username": "alice", "password": "correct horse battery"})

    username: str = Field(min_length=1, max_length=254, description="Username or e-mail address")
    password: str = Field(min_length=1, max_length=128)


_REFRESH_EXAMPLE: JsonDict = {
    "refresh_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJ0eXBlIjoicmVmcmVzaCJ9.c2ln"
}


class RefreshRequest(RequestModel):
    model_config = example(_REFRESH_EXAMPLE)

    refresh_token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)


class RevokeRequest(RequestModel):
    model_config = example(_REFRESH_EXAMPLE)

    refresh_token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)


class VerifyRequest(RequestModel):
    model_config = example({"token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2ln"})

    token: str = Field(min_length=1, max_length=MAX_TOKEN_LENGTH)


class TokenPair(BaseModel):
    # Always sent, so required in the response schema (and in generated clients).
    model_config = ConfigDict(json_schema_serialization_defaults_required=True)

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105 - the OAuth2 token type, not a secret
    expires_in: int = Field(description="Seconds until the access token expires")
    refresh_expires_in: int = Field(description="Seconds until the refresh token expires")


class Empty(BaseModel):
    model_config = ConfigDict(extra="forbid")
