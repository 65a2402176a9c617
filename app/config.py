"""Settings, read once from the environment (or `.env`) and injected everywhere else."""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import time
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from limits import parse_many
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict
from sqlalchemy.engine import URL, make_url

logger = logging.getLogger(__name__)

MIN_SECRET_BYTES = 32
DEFAULT_SECRETS = frozenset({"", "change-me", "changeme", "secret", "please-change-me"})
ASYMMETRIC_PREFIXES = ("RS", "PS", "ES", "Ed")
MEDIA_KEY_CONTEXT = b"inkwell media URL signatures v1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    _public_url_derived: bool = PrivateAttr(default=False)

    environment: Literal["development", "test", "production"] = "development"
    data_dir: Path = Path("data")

    # Database: a whole DATABASE_URL, or DB_HOST... for PostgreSQL, or SQLite under DATA_DIR.
    database_url: str | None = None
    db_host: str | None = None
    db_port: int = 5432
    db_user: str = "postgres"
    db_pass: SecretStr = SecretStr("")
    db_name: str = "inkwell"
    db_pool_size: int = Field(default=20, ge=1)
    db_max_overflow: int = Field(default=10, ge=0)
    db_echo: bool = False
    # Behind PgBouncer in transaction mode: no prepared statement outlives its statement.
    db_pgbouncer: bool = False

    # Tokens
    jwt_secret_key: SecretStr | None = None
    jwt_algorithm: str = "HS256"
    jwt_private_key_file: Path | None = None
    jwt_public_key_file: Path | None = None
    jwt_issuer: str = "inkwell"
    jwt_audience: str = "inkwell-api"
    access_token_expire_minutes: int = Field(default=15, ge=1)
    refresh_token_expire_days: int = Field(default=14, ge=1)
    # The RealWorld API at /conduit has no refresh flow: its access tokens live this long.
    conduit_token_expire_minutes: int = Field(default=1440, ge=1, le=525_600)

    # Passwords: Argon2id, OWASP's recommended minimum by default (m=19 MiB, t=2, p=1).
    argon2_memory_kib: int = Field(default=19_456, ge=8)
    argon2_time_cost: int = Field(default=2, ge=1)
    argon2_parallelism: int = Field(default=1, ge=1)

    # HTTP
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    web_concurrency: int = Field(default=1, ge=1)
    # How long an idle keep-alive connection stays open. Longer than a load balancer's idle
    # timeout (60 s on AWS ALB and most proxies), so the server never closes a connection the
    # proxy is about to reuse (the cause of sporadic 502s with uvicorn's default of 5 s).
    keep_alive_seconds: int = Field(default=75, ge=1, le=3600)
    # The API's public base URL, as users reach it. Unset: http://HOST:PORT as served.
    public_url: str = ""
    # A frontend that serves /verify-email and /reset-password itself: e-mail links go there.
    frontend_url: str | None = None
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    media_root: Path | None = None
    # Swagger UI at /docs, ReDoc at /redoc and /openapi.json; often turned off in production.
    docs_enabled: bool = True
    # Prometheus metrics at /metrics; keep the route off the public internet (see the README).
    metrics_enabled: bool = True

    # Redis: cache, rate limits and the revocation fast path; in-process memory when unset.
    redis_url: str | None = None
    redis_timeout_seconds: float = Field(default=0.5, gt=0)
    # After a failure Redis is skipped for this long, then tried again.
    redis_retry_seconds: float = Field(default=1.0, ge=0)
    # Connections per process. When all are busy a command waits for one, up to
    # REDIS_POOL_WAIT_SECONDS: load is back-pressure, not an outage (nothing is marked down).
    redis_max_connections: int = Field(default=64, ge=1, le=10_000)
    redis_pool_wait_seconds: float = Field(default=2.0, gt=0)
    # A revocation (logout, ended sessions, a deactivated user) is answered only once Redis has
    # it, since other processes trust Redis; through a hang or restart it is retried this long,
    # then answered 503 `revocation_pending` (the database change stays). The answer comes
    # within this plus REDIS_TIMEOUT_SECONDS: keep the sum under clients' timeouts.
    redis_revocation_wait_seconds: float = Field(default=4.0, ge=0)
    cache_enabled: bool = True
    # With Redis: cached answers and session checks also kept in process memory, invalidated by
    # Redis (client-side tracking), so a cached read needs no round trip.
    near_cache_enabled: bool = True
    cache_ttl_seconds: int = Field(default=300, ge=1)
    auth_cache_ttl_seconds: int = Field(default=60, ge=1)

    # Rate limits, in the `limits` notation ("10/minute", "5 per 15 minutes").
    rate_limits_enabled: bool = True
    rate_limit_login_ip: str = "10/minute"
    # Failed logins per account *from one client address* (an IPv6 /64): that address is locked
    # out of that account; the owner elsewhere is not.
    rate_limit_login_account: str = "5/15 minutes"
    # Failed logins per account from all addresses together: over it, an address that already
    # failed for the account within this window is refused until its failure leaves the window.
    rate_limit_login_account_ceiling: str = "100/hour"
    # An address the account logged in from within this many days is exempt from the ceiling.
    login_known_address_days: int = Field(default=30, ge=0)
    rate_limit_register_ip: str = "10/minute"
    rate_limit_password_reset_ip: str = "5/minute"  # noqa: S105 - a rate, not a secret

    # Background jobs: Celery when a broker is set, in-process after the response otherwise.
    celery_broker_url: str | None = None
    celery_result_backend: str | None = None
    # An unacknowledged task (its worker died) is delivered again after this long (Redis broker).
    celery_visibility_timeout_seconds: int = Field(default=300, ge=1)
    celery_queue: str = "inkwell"
    # A job sent whose task is still pending (or retrying, or held by a try older than the hard
    # time limit) this long after was lost on its way (a broker that restarted without
    # persistence): the outbox relays send it again. Images and e-mails alike.
    image_stuck_after_seconds: int = Field(default=600, ge=1)
    task_max_attempts: int = Field(default=3, ge=1)
    # A job still running after the soft limit is stopped and recorded as failed; the worker
    # process of a job still running after the hard limit is killed and replaced.
    task_soft_time_limit_seconds: int = Field(default=120, ge=1)
    task_time_limit_seconds: int = Field(default=150, ge=1)
    # How long a request waits for the broker to take a job: past it, the job (already stored
    # with the request's data) is sent by the outbox relay once the broker answers.
    celery_publish_timeout_seconds: float = Field(default=1.0, gt=0)
    # How often the outbox relay looks for jobs not sent yet, and the longest it waits between
    # two tries of one job (the wait doubles from one second, with jitter).
    outbox_relay_interval_seconds: float = Field(default=2.0, gt=0)
    outbox_retry_max_seconds: float = Field(default=60.0, ge=1)

    # E-mail: SMTP when SMTP_HOST is set, `.eml` files under DATA_DIR/outbox otherwise.
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_user: str | None = None
    smtp_password: SecretStr | None = None
    smtp_from: str = "Inkwell <no-reply@inkwell.local>"
    smtp_starttls: bool = False
    smtp_timeout_seconds: float = Field(default=10.0, gt=0)
    email_verify_token_hours: int = Field(default=48, ge=1)
    password_reset_token_minutes: int = Field(default=30, ge=1)
    require_email_verification: bool = False
    rate_limit_verify_resend: str = "3/hour"
    rate_limit_email_change: str = "5/hour"
    # Wrong current passwords per account (changing the e-mail address or the password).
    rate_limit_sensitive_account: str = "5/15 minutes"

    # Request bodies: every body but an upload's is refused (413) beyond this many bytes.
    max_body_bytes: int = Field(default=1024 * 1024, ge=1)

    # Uploads
    max_upload_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    # Parts of an upload form (`file`, `alt`, any other); more is refused (413).
    max_upload_parts: int = Field(default=10, ge=2)
    max_image_pixels: int = Field(default=40_000_000, ge=1)
    max_images_per_post: int = Field(default=10, ge=1)
    media_url: str = "/media"
    # Drafts' media are served only at signed URLs, given to the author and administrators in
    # their answers; a URL stays valid this long after the answer that carries it was built.
    media_signed_url_seconds: int = Field(default=900, ge=10, le=7 * 24 * 3600)
    # The key of those signatures; unset: derived from the JWT secret (or private key).
    media_signing_key: SecretStr | None = None
    # Media on S3-compatible object storage: setting S3_BUCKET switches media to the bucket,
    # shared by every API host and worker. S3_ENDPOINT_URL: any S3-compatible server (MinIO,
    # moto...); unset, AWS. Credentials: these two, or the standard AWS chain when unset.
    s3_bucket: str | None = None
    s3_endpoint_url: str | None = None
    s3_region: str | None = None
    s3_access_key_id: str | None = None
    s3_secret_access_key: SecretStr | None = None
    # Uploads past this size go to the bucket as a multipart upload, one part at a time.
    s3_multipart_bytes: int = Field(default=8 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Set each object's canned ACL when its post is (un)published: `public-read` or `private`.
    # Off for servers without ACLs (MinIO) or buckets with ACLs disabled: the bucket's policy or
    # the CDN then decides who reads, and drafts rely on their unguessable keys.
    s3_object_acl: bool = True
    # Published media's base URL (a CDN in front of the bucket); unset, the bucket's own URL.
    media_public_url: str | None = None
    # How often a failed deletion of media files is tried again.
    media_deletion_retry_seconds: float = Field(default=60, gt=0)

    # A first administrator, created at start-up when both are set; never a promotion.
    first_admin_email: str | None = None
    first_admin_username: str = "admin"
    first_admin_password: SecretStr | None = None

    @model_validator(mode="before")
    @classmethod
    def _split_origins(cls, data: object) -> object:
        if isinstance(data, dict):
            for key in ("cors_origins", "CORS_ORIGINS"):
                value = data.get(key)
                if isinstance(value, str):
                    data[key] = [o.strip() for o in value.split(",") if o.strip()]
        return data

    @field_validator("public_url", "frontend_url")
    @classmethod
    def _base_url(cls, value: str | None) -> str | None:
        if not value:
            return None if value is None else ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {value!r}")
        if parts.query or parts.fragment:
            raise ValueError(f"a base URL has no query or fragment: {value!r}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _default_public_url(self) -> Settings:
        if not self.public_url:
            # The address this server listens on: links then reach it whatever PORT is.
            self.public_url = f"http://{_url_host(self.host)}:{self.port}"
            self._public_url_derived = True
        return self

    @model_validator(mode="after")
    def _check_keys(self) -> Settings:
        if self.uses_asymmetric_keys:
            if not (self.jwt_private_key_file and self.jwt_public_key_file):
                raise ValueError(
                    f"JWT_ALGORITHM={self.jwt_algorithm} needs JWT_PRIVATE_KEY_FILE "
                    "and JWT_PUBLIC_KEY_FILE"
                )
        elif self.environment == "production":
            secret = self.jwt_secret_key.get_secret_value() if self.jwt_secret_key else ""
            if _is_weak(secret):
                raise ValueError(
                    "ENVIRONMENT=production needs JWT_SECRET_KEY: at least "
                    f"{MIN_SECRET_BYTES} random bytes, not a default"
                )
        if self.media_signing_key is not None and _is_weak(
            self.media_signing_key.get_secret_value()
        ):
            raise ValueError(
                f"MEDIA_SIGNING_KEY needs at least {MIN_SECRET_BYTES} random bytes; "
                "leave it unset to derive it from the JWT key"
            )
        return self

    @model_validator(mode="after")
    def _check_time_limits(self) -> Settings:
        if self.task_time_limit_seconds <= self.task_soft_time_limit_seconds:
            raise ValueError(
                "TASK_TIME_LIMIT_SECONDS must be over TASK_SOFT_TIME_LIMIT_SECONDS, so that a job "
                "stopped at its soft limit can record its failure"
            )
        return self

    @field_validator(
        "rate_limit_login_ip",
        "rate_limit_login_account",
        "rate_limit_login_account_ceiling",
        "rate_limit_register_ip",
        "rate_limit_password_reset_ip",
        "rate_limit_verify_resend",
        "rate_limit_email_change",
        "rate_limit_sensitive_account",
    )
    @classmethod
    def _valid_rate_limit(cls, value: str) -> str:
        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit: {value!r} (try '10/minute')") from exc
        return value

    @property
    def email_link_base(self) -> str:
        """Where the links in e-mails point: the frontend's pages, or this API's own."""
        return self.frontend_url or self.public_url

    @property
    def uses_asymmetric_keys(self) -> bool:
        return self.jwt_algorithm.startswith(ASYMMETRIC_PREFIXES)

    @property
    def sqlalchemy_url(self) -> URL:
        if self.database_url:
            url = make_url(self.database_url)
            if url.drivername in ("postgresql", "postgres", "postgresql+psycopg2"):
                url = url.set(drivername="postgresql+asyncpg")
            elif url.drivername == "sqlite":
                url = url.set(drivername="sqlite+aiosqlite")
            return url
        if self.db_host:
            return URL.create(
                "postgresql+asyncpg",
                username=self.db_user,
                password=self.db_pass.get_secret_value() or None,
                host=self.db_host,
                port=self.db_port,
                database=self.db_name,
            )
        return URL.create("sqlite+aiosqlite", database=str(self.data_dir / "inkwell.db"))

    @property
    def is_sqlite(self) -> bool:
        return self.sqlalchemy_url.get_backend_name() == "sqlite"

    @property
    def media_path(self) -> Path:
        return self.media_root or self.data_dir / "media"

    @property
    def uploads_path(self) -> Path:
        """Where raw uploads wait for the worker: private, never served."""
        return self.data_dir / "uploads"

    @property
    def outbox_path(self) -> Path:
        return self.data_dir / "outbox"

    def warn_about_production_gaps(self) -> None:
        if self.environment != "production":
            return
        if self.is_sqlite:
            logger.warning("running in production on SQLite; set DB_HOST or DATABASE_URL")
        if not self.redis_url:
            logger.warning("running in production without Redis; set REDIS_URL")
        if self._public_url_derived and not self.frontend_url:
            logger.warning(
                "PUBLIC_URL is not set: e-mail links point at %s; set PUBLIC_URL", self.public_url
            )

    def jwt_signing_key(self) -> str:
        if self.uses_asymmetric_keys:
            assert self.jwt_private_key_file is not None, "checked at start-up"
            return self.jwt_private_key_file.read_text()
        return self._symmetric_secret()

    def jwt_verifying_key(self) -> str:
        if self.uses_asymmetric_keys:
            assert self.jwt_public_key_file is not None, "checked at start-up"
            return self.jwt_public_key_file.read_text()
        return self._symmetric_secret()

    def media_url_signing_key(self) -> bytes:
        """The key signing drafts' media URLs: MEDIA_SIGNING_KEY, or one derived from the JWT
        key, so that a media URL signature can never be mistaken for a token's."""
        if self.media_signing_key is not None:
            secret = self.media_signing_key.get_secret_value()
        else:
            secret = self.jwt_signing_key()
        return hmac.new(secret.encode(), MEDIA_KEY_CONTEXT, hashlib.sha256).digest()

    def _symmetric_secret(self) -> str:
        if self.jwt_secret_key and self.jwt_secret_key.get_secret_value():
            return self.jwt_secret_key.get_secret_value()
        return _development_secret(self.data_dir)


def _is_weak(secret: str) -> bool:
    return secret.lower() in DEFAULT_SECRETS or len(secret.encode()) < MIN_SECRET_BYTES


def _url_host(host: str) -> str:
    """HOST as a URL's host: a wildcard address is reached through the loopback one."""
    if host in ("", "0.0.0.0"):  # noqa: S104 - naming the wildcard, not binding to it
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


@lru_cache
def _development_secret(data_dir: Path) -> str:
    """A secret generated once and kept under DATA_DIR, so tokens survive restarts."""
    path = data_dir / "jwt-secret"
    data_dir.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    try:
        # Exclusive creation: of several processes starting at once, one writes the secret
        # and the others read it.
        descriptor = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
    except FileExistsError:
        for _ in range(50):  # the writer may not have written yet
            if existing := path.read_text().strip():
                return existing
            time.sleep(0.01)
        raise RuntimeError(f"{path} is empty: delete it, or set JWT_SECRET_KEY") from None
    with os.fdopen(descriptor, "w") as file:
        file.write(secret)
    logger.info("generated a development JWT secret", extra={"path": str(path)})
    return secret


@lru_cache
def get_settings() -> Settings:
    return Settings()
