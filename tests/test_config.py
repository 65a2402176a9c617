from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import Settings
from app.core.security import Passwords
from tests.live_server import ROOT

STRONG_SECRET = "s" * 40


def _settings(tmp_path: Path, **values: object) -> Settings:
    return Settings.model_validate({"data_dir": tmp_path, **values})


def test_sqlite_under_data_dir_when_no_database_is_configured(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.sqlalchemy_url.drivername == "sqlite+aiosqlite"
    assert settings.sqlalchemy_url.database == str(tmp_path / "inkwell.db")


def test_db_host_selects_postgresql(tmp_path: Path) -> None:
    settings = _settings(
        tmp_path, db_host="db", db_user="ink", db_pass="pw", db_name="inkwell", db_port=6543
    )
    url = settings.sqlalchemy_url
    assert (url.drivername, url.host, url.port, url.username, url.database) == (
        "postgresql+asyncpg",
        "db",
        6543,
        "ink",
        "inkwell",
    )
    assert url.password == "pw"


def test_database_url_gets_an_async_driver(tmp_path: Path) -> None:
    settings = _settings(tmp_path, database_url="postgresql://u@h/d")
    assert settings.sqlalchemy_url.drivername == "postgresql+asyncpg"


@pytest.mark.parametrize("secret", [None, "", "change-me", "short-secret"])
def test_production_refuses_a_missing_default_or_short_secret(
    tmp_path: Path, secret: str | None
) -> None:
    with pytest.raises(ValidationError, match="JWT_SECRET_KEY"):
        _settings(tmp_path, environment="production", jwt_secret_key=secret)


def test_production_starts_with_a_strong_secret(tmp_path: Path) -> None:
    settings = _settings(tmp_path, environment="production", jwt_secret_key=STRONG_SECRET)
    assert settings.jwt_signing_key() == STRONG_SECRET


def test_asymmetric_algorithms_need_key_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="JWT_PRIVATE_KEY_FILE"):
        _settings(tmp_path, jwt_algorithm="RS256")


def test_development_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = _settings(tmp_path).jwt_signing_key()
    assert len(first) >= 32
    assert (tmp_path / "jwt-secret").read_text().strip() == first
    assert _settings(tmp_path).jwt_signing_key() == first


def test_cors_origins_are_a_comma_separated_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CORS_ORIGINS", "https://a.example, https://b.example")
    assert Settings(data_dir=tmp_path).cors_origins == ["https://a.example", "https://b.example"]


def test_default_password_hashing_meets_owasp_argon2id_minimum(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert settings.argon2_memory_kib >= 19 * 1024
    assert settings.argon2_time_cost >= 2
    assert settings.argon2_parallelism >= 1
    assert Passwords(settings).parameters.startswith("argon2id m=19456 KiB, t=2, p=1")


async def test_password_hashing_runs_off_the_event_loop_thread(tmp_path: Path) -> None:
    passwords = Passwords(_settings(tmp_path, argon2_memory_kib=1024, argon2_time_cost=1))
    loop_thread = threading.get_ident()
    seen: list[int] = []
    hasher = passwords._hasher

    class RecordingHasher:
        def __getattr__(self, name: str) -> object:
            method = getattr(hasher, name)

            def call(*args: object) -> object:
                seen.append(threading.get_ident())
                return method(*args)

            return call

    passwords._hasher = RecordingHasher()  # type: ignore[assignment]
    password_hash = await passwords.hash("a long enough password")
    assert seen
    assert loop_thread not in seen
    assert await passwords.verify(password_hash, "a long enough password")
    assert not await passwords.verify(password_hash, "a long enough password!")
    assert not await passwords.verify(None, "a long enough password")


def test_env_example_documents_every_setting() -> None:
    documented = (Path(__file__).parent.parent / ".env.example").read_text()
    missing = [name.upper() for name in Settings.model_fields if name.upper() not in documented]
    assert missing == []


def test_processes_starting_together_agree_on_one_development_secret(tmp_path: Path) -> None:
    # `run --workers 4` without JWT_SECRET_KEY: every process makes its Security at once.
    script = (
        "import sys; from pathlib import Path; from app.config import _development_secret; "
        "print(_development_secret(Path(sys.argv[1])))"
    )
    processes = [
        subprocess.Popen(  # noqa: S603 - our own fixed arguments
            [sys.executable, "-c", script, str(tmp_path)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        for _ in range(6)
    ]
    secrets = {process.communicate(timeout=60)[0].strip() for process in processes}
    assert len(secrets) == 1
    assert secrets == {(tmp_path / "jwt-secret").read_text().strip()}
    assert (tmp_path / "jwt-secret").stat().st_mode & 0o777 == 0o600
