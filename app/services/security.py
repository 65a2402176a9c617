from __future__ import annotations

from dataclasses import dataclass

from app.config import Settings
from app.core.security import Passwords, Tokens


@dataclass(frozen=True, slots=True)
class Security:
    """The process-wide password hasher and token signer, built once from settings."""

    passwords: Passwords
    tokens: Tokens

    @classmethod
    def from_settings(cls, settings: Settings) -> Security:
        return cls(Passwords(settings), Tokens(settings))


@dataclass(frozen=True, slots=True)
class Client:
    """Who is calling, as recorded on the sessions they open."""

    user_agent: str = ""
    ip: str = ""
