# syntax=docker/dockerfile:1
# One image for every Inkwell process: the API (the default command), the Celery worker
# (`python -m app worker`) and the migrations (`python -m app migrate`). docker-compose.yml runs
# all three from it.

# --- builder: the locked dependencies, then the project, into /app/.venv ----------------------
# Both stages use the same base image: the virtual environment built here points at its
# /usr/local/bin/python3.11. (Written out twice, not as an ARG, so that Dependabot updates it.)
FROM python:3.11.14-slim-bookworm AS builder

# The same uv as the Makefile's UV_VERSION.
COPY --from=ghcr.io/astral-sh/uv:0.13.9 /uv /uvx /bin/

ENV UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy \
    UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/app/.venv

WORKDIR /app

# The dependencies first, from the lock file alone: this layer is rebuilt only when
# pyproject.toml or uv.lock change, not on every code change.
COPY pyproject.toml uv.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev --no-install-project

# Then the code, and the project itself (README.md is part of the package metadata).
COPY README.md alembic.ini ./
COPY migrations ./migrations
COPY app ./app
RUN --mount=type=cache,target=/root/.cache/uv \
    uv sync --frozen --no-dev \
    && python -m compileall -q app migrations

# --- runtime: the interpreter, the environment and the code; no build tools -------------------
FROM python:3.11.14-slim-bookworm AS runtime

ENV PATH="/app/.venv/bin:${PATH}" \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HOST=0.0.0.0 \
    PORT=8000 \
    DATA_DIR=/app/data

RUN groupadd --system --gid 10001 inkwell \
    && useradd --system --uid 10001 --gid inkwell --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin inkwell

WORKDIR /app
# The code and the environment stay owned by root: the service account can read them, not
# change them. It writes only under /app/data (SQLite, media, uploads waiting for the worker,
# the outbox, the generated development JWT secret); mount a volume there.
COPY --from=builder /app /app
RUN mkdir -p /app/data/media /app/data/uploads \
    && chown -R inkwell:inkwell /app/data

# Numeric, so that runtimes enforcing "run as non-root" can check it.
USER 10001:10001

EXPOSE 8000

# Liveness of the API (slim images have no curl). The worker runs without an HTTP server:
# docker-compose.yml gives it a Celery ping instead.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('PORT', '8000') + '/health', timeout=4)"]

# uvicorn on HOST:PORT with WEB_CONCURRENCY worker processes (1 by default).
CMD ["python", "-m", "app", "run"]
