"""Every domain error, as a type: services raise them, `app.web.problems` renders them as
problem+json (RFC 9457). Nothing here knows HTTP frameworks."""

from __future__ import annotations

from typing import Any, ClassVar


class AppError(Exception):
    """Base of every error a service raises. Subclasses set `status`, `code` and `title`."""

    status: ClassVar[int] = 400
    code: ClassVar[str] = "bad_request"
    title: ClassVar[str] = "Bad request"
    detail: ClassVar[str] = ""

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        self.message = detail or self.detail or self.title
        self.headers = headers or {}
        self.extra = extra or {}  # more members of the problem body, beside the standard ones
        super().__init__(self.message)


# --- authentication ---------------------------------------------------------------------------
class Unauthorized(AppError):
    status = 401
    code = "not_authenticated"
    title = "Not authenticated"
    detail = "Send a valid access token: `Authorization: Bearer <token>`."

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class InvalidCredentials(Unauthorized):
    code = "invalid_credentials"
    title = "Invalid credentials"
    detail = "The username or password is incorrect."


class InvalidToken(Unauthorized):
    code = "token_invalid"
    title = "Invalid token"
    detail = "The token is malformed, badly signed or not meant for this use."


class TokenExpired(Unauthorized):
    code = "token_expired"
    title = "Token expired"
    detail = "The token has expired."


class TokenRevoked(Unauthorized):
    code = "token_revoked"
    title = "Token revoked"
    detail = "The session this token belongs to has ended."


class RefreshTokenReused(Unauthorized):
    code = "token_reused"
    title = "Refresh token reused"
    detail = "This refresh token was already used; the session has been ended for safety."


class InactiveUser(Unauthorized):
    code = "user_inactive"
    title = "Account inactive"
    detail = "This account is deactivated."


class RevocationPending(AppError):
    """503: the database has ended the session(s), but Redis, where every API process looks
    first, could not be told within REDIS_REVOCATION_WAIT_SECONDS. Not acknowledged: until
    this process reaches Redis again (or AUTH_CACHE_TTL_SECONDS pass) another one may still
    accept the session. Logging out or ending the session again tells Redis once it answers."""

    status = 503
    code = "revocation_pending"
    title = "Revocation not confirmed"

    def __init__(self, retry_after: int, cached_for: int) -> None:
        super().__init__(
            "Saved, but not every server could be told yet that the session has ended, so its "
            f"tokens may still work for up to {cached_for} seconds. Log out or end the session "
            "again to confirm.",
            headers={"Retry-After": str(retry_after)},
        )


# --- permissions ------------------------------------------------------------------------------
class Forbidden(AppError):
    status = 403
    code = "forbidden"
    title = "Forbidden"
    detail = "You are not allowed to do this."


class EmailNotVerified(Forbidden):
    code = "email_not_verified"
    detail = "Verify your e-mail address before publishing; drafts are allowed meanwhile."


class AdminRequired(Forbidden):
    code = "admin_required"
    detail = "Only administrators may do this."


class NotPostAuthor(Forbidden):
    code = "not_post_author"
    detail = "Only the post's author or an administrator may change it."


# --- missing ----------------------------------------------------------------------------------
class NotFound(AppError):
    status = 404
    code = "not_found"
    title = "Not found"


class PostNotFound(NotFound):
    code = "post_not_found"
    detail = "No such post."


class UserNotFound(NotFound):
    code = "user_not_found"
    detail = "No such user."


class SessionNotFound(NotFound):
    code = "session_not_found"
    detail = "No such session."


# --- conflicts and rule violations ------------------------------------------------------------
class Conflict(AppError):
    status = 409
    code = "conflict"
    title = "Conflict"


class EmailTaken(Conflict):
    code = "email_taken"
    detail = "An account with this e-mail address already exists."


class UsernameTaken(Conflict):
    code = "username_taken"
    detail = "This username is taken."


class WrongPassword(AppError):
    status = 400
    code = "wrong_password"
    title = "Wrong password"
    detail = "The current password is incorrect."


class LastAdmin(Conflict):
    code = "last_admin"
    detail = "The last active administrator cannot be removed or demoted."


class AdminSetupRefused(Conflict):
    """`create-admin` or `FIRST_ADMIN_*` would hand administration to an account nobody has
    shown is the operator's, or with a password the policy refuses."""

    code = "admin_setup_refused"
    title = "Administrator not created"


class EmailTokenInvalid(AppError):
    status = 400
    code = "email_token_invalid"
    title = "Invalid or expired link"
    detail = "This link is invalid, expired or already used. Ask for a new one."


class UnsupportedGrantType(AppError):
    code = "unsupported_grant_type"
    title = "Unsupported grant type"
    detail = "Only the OAuth2 password grant is supported here."


class InvalidUpload(AppError):
    status = 422
    code = "invalid_upload"
    title = "Invalid upload"


class PayloadTooLarge(AppError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class BodyTooLarge(PayloadTooLarge):
    code = "body_too_large"


class UnsupportedMediaType(AppError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported media type"


class RateLimited(AppError):
    """429: `what` names the limit, `retry_after` (seconds) is when its window has room again."""

    status = 429
    code = "rate_limited"
    title = "Too many requests"
    detail = "Too many requests"

    def __init__(self, retry_after: int, what: str | None = None) -> None:
        self.retry_after = retry_after
        super().__init__(
            f"{what or self.detail}; try again in {_wait(retry_after)}.",
            headers={"Retry-After": str(retry_after)},
        )


class LoginLocked(RateLimited):
    code = "login_locked"
    title = "Login locked"
    detail = "Too many failed logins for this account from your address"


class LoginThrottled(RateLimited):
    code = "login_throttled"
    title = "Login throttled"
    detail = "Too many failed logins for this account"


def _wait(seconds: int) -> str:
    """A whole number of seconds, minutes or hours, rounded up: never sooner than the truth."""
    for unit, size in (("hour", 3600), ("minute", 60)):
        if seconds >= 2 * size:
            n = -(-seconds // size)
            return f"{n} {unit}s"
    return f"{seconds} second{'' if seconds == 1 else 's'}"


class ServiceUnavailable(AppError):
    status = 503
    code = "dependency_unavailable"
    title = "Service unavailable"


# Seconds a client should wait before sending again a request a dependency could not serve: a
# database restart (`pg_ctl restart -m fast`) or fail-over takes about that long.
UNAVAILABLE_RETRY_AFTER_S = 1


class DatabaseUnavailable(ServiceUnavailable):
    """The database could not be reached, or lost the connection mid-request. Nothing is known
    to be saved: a write may or may not have been committed, so its client reads before sending
    it again (or sends it again if it is idempotent)."""

    code = "database_unavailable"
    detail = "The database is unavailable for a moment; try again shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


class NotReady(ServiceUnavailable):
    """A dependency failed its readiness check; `checks` names the state of each one."""

    title = "Not ready"

    def __init__(self, checks: dict[str, str]) -> None:
        failing = [name for name, state in checks.items() if state != "ok"]
        super().__init__(
            f"Unavailable: {', '.join(failing)}.",
            headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)},
            extra={"checks": checks},
        )


# --- Images, media and background tasks ----------------------------------------------------


class ImageNotFound(NotFound):
    code = "image_not_found"
    detail = "No such image."


class TooManyImages(Conflict):
    code = "too_many_images"


class TooManyPixels(AppError):
    status = 422
    code = "image_too_large"
    title = "Image too large"


class UnreadableImage(AppError):
    status = 422
    code = "invalid_image"
    title = "Invalid image"


class MediaUnavailable(ServiceUnavailable):
    """The media storage (the bucket) could not be reached: nothing of the upload was kept."""

    code = "media_unavailable"
    detail = "Media storage is unavailable for a moment; try again shortly."

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": str(UNAVAILABLE_RETRY_AFTER_S)})


class MediaNotFound(NotFound):
    code = "media_not_found"
    detail = "No such file, or not yours to see."

    def __init__(self) -> None:
        # Not cached anywhere: the file may become public when its post is published.
        super().__init__(headers={"Cache-Control": "no-store"})


class TaskNotFound(NotFound):
    code = "task_not_found"
    detail = "No such task."


# --- social: profiles, follows, comments, cursors ---------------------------------------------
class InvalidCursor(AppError):
    status = 422
    code = "invalid_cursor"
    title = "Invalid cursor"
    detail = "The cursor is not one this list gave out: start again without it."


class ProfileNotFound(NotFound):
    code = "profile_not_found"
    detail = "No such profile."


class CannotFollowYourself(AppError):
    status = 422
    code = "cannot_follow_yourself"
    title = "Cannot follow yourself"
    detail = "You cannot follow yourself."


class CommentNotFound(NotFound):
    code = "comment_not_found"
    detail = "No such comment."


class NotCommentAuthor(Forbidden):
    code = "not_comment_author"
    detail = "Only the comment's author may change it."


class CannotDeleteComment(Forbidden):
    code = "cannot_delete_comment"
    detail = "Only the comment's author, the post's author or an administrator may delete it."


class InvalidParentComment(AppError):
    status = 422
    code = "invalid_parent_comment"
    title = "Invalid parent comment"
    detail = "parent_id must name a comment of the same post."
