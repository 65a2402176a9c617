"""The delivery files keep their promises: the image, the Compose stacks, the workflows.

Nothing here needs a Docker daemon: `docker compose config` only reads and resolves the files.
Either Compose works (the `docker compose` plugin, or the older `docker-compose`); without one
these tests are skipped, except with CI=true, where they fail.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

from app.config import Settings
from tests.conftest import ON_CI

ROOT = Path(__file__).resolve().parent.parent
BASE = "docker-compose.yml"
PRODUCTION = "docker-compose.prod.yml"
APP_SERVICES = ("migrate", "api", "worker")
# What a server's .env would hold (docker-compose.prod.yml requires these).
PRODUCTION_VARIABLES = {
    "DOMAIN": "api.example.com",
    "ACME_EMAIL": "ops@example.com",
    "JWT_SECRET_KEY": "a-test-secret-" + "x" * 40,
    "POSTGRES_PASSWORD": "a-test-password",
    "SMTP_HOST": "smtp.example.com",
    "SMTP_FROM": "Inkwell <no-reply@example.com>",
}
# Read by uvicorn itself rather than by Settings.
NON_SETTINGS_VARIABLES = {"FORWARDED_ALLOW_IPS"}
REQUIRED_IN_PRODUCTION = ("JWT_SECRET_KEY", "POSTGRES_PASSWORD", "DOMAIN", "ACME_EMAIL")


def makefile_uv_version() -> str:
    match = re.search(r"^UV_VERSION\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match, "the Makefile pins UV_VERSION"
    return match.group(1)


def load_yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


# --- Compose ---------------------------------------------------------------------------------


def compose_command() -> list[str]:
    """`docker compose` (v2) when the plugin is there, else `docker-compose` (v1)."""
    docker = shutil.which("docker")
    if docker is not None:
        probe = subprocess.run(  # noqa: S603 - fixed arguments
            [docker, "compose", "version"], capture_output=True, check=False
        )
        if probe.returncode == 0:
            return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    if legacy is not None:
        return [legacy]
    message = "neither `docker compose` nor `docker-compose` is installed"
    if ON_CI:
        pytest.fail(message + " (CI=true: the Compose checks may not be skipped)")
    pytest.skip(message)


def interpolated_names() -> set[str]:
    names: set[str] = set()
    for name in (BASE, PRODUCTION):
        names |= set(re.findall(r"\$\{(\w+)", (ROOT / name).read_text()))
    return names


@dataclass
class Compose:
    command: list[str]
    env_file: Path

    def run(
        self, files: tuple[str, ...], profiles: tuple[str, ...], variables: dict[str, str]
    ) -> subprocess.CompletedProcess[str]:
        # The caller's shell and any .env must not leak in: only `variables` are set.
        hidden = interpolated_names()
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in hidden and not key.startswith("COMPOSE_")
        }
        args = [*self.command, "--project-directory", str(ROOT), "--env-file", str(self.env_file)]
        for name in files:
            args += ["-f", str(ROOT / name)]
        for profile in profiles:
            args += ["--profile", profile]
        return subprocess.run(  # noqa: S603 - our own arguments
            [*args, "config"],
            capture_output=True,
            text=True,
            env={**env, **variables},
            cwd=ROOT,
            check=False,
            timeout=60,
        )

    def config(
        self, files: tuple[str, ...], profiles: tuple[str, ...], variables: dict[str, str]
    ) -> dict[str, Any]:
        result = self.run(files, profiles, variables)
        assert result.returncode == 0, result.stderr
        data = yaml.safe_load(result.stdout)
        assert isinstance(data, dict)
        return data


@pytest.fixture(scope="module")
def compose(tmp_path_factory: pytest.TempPathFactory) -> Compose:
    env_file = tmp_path_factory.mktemp("compose") / "empty.env"
    env_file.write_text("")
    return Compose(compose_command(), env_file)


@pytest.fixture(scope="module")
def development(compose: Compose) -> dict[str, Any]:
    """`docker compose up`: the base file alone, no .env."""
    return compose.config((BASE,), (), {})


@pytest.fixture(scope="module")
def production(compose: Compose) -> dict[str, Any]:
    return compose.config((BASE, PRODUCTION), ("production",), PRODUCTION_VARIABLES)


def services(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = config["services"]
    return found


def started(config: dict[str, Any], profiles: tuple[str, ...] = ()) -> set[str]:
    """The services `up` starts. Compose v2 leaves inactive profiles out of `config`; v1 lists
    them with their `profiles`."""
    return {
        name
        for name, service in services(config).items()
        if not service.get("profiles") or set(service["profiles"]) & set(profiles)
    }


def environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {key: "" if value is None else str(value) for key, value in raw.items()}


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """Target path -> source (a named volume or a host path), v1 short or v2 long syntax."""
    found: dict[str, str] = {}
    for volume in service.get("volumes", []):
        if isinstance(volume, str):
            source, target = volume.split(":")[:2]
        else:
            source, target = volume["source"], volume["target"]
        found[target] = source
    return found


def ports(service: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(host address, published port, container port) of each published port."""
    found = []
    for port in service.get("ports", []):
        if isinstance(port, str):
            *host, published, target = port.split("/")[0].split(":")
            found.append((host[0] if host else "", published, target))
        else:
            host_ip = str(port.get("host_ip", ""))
            found.append((host_ip, str(port.get("published", "")), str(port["target"])))
    return found


def condition(service: dict[str, Any], dependency: str) -> str:
    depends_on = service.get("depends_on", {})
    assert isinstance(depends_on, dict), "depends_on with conditions"
    assert dependency in depends_on, f"depends on {dependency}"
    value: str = depends_on[dependency]["condition"]
    return value


def test_compose_development_stack_starts_everything_with_a_mail_catcher(
    development: dict[str, Any],
) -> None:
    assert started(development) >= {*APP_SERVICES, "postgres", "redis", "mailpit"}
    assert "traefik" not in started(development)


def test_compose_api_and_worker_wait_for_the_migrations_and_healthy_services(
    development: dict[str, Any],
) -> None:
    stack = services(development)
    assert stack["migrate"]["command"] == ["python", "-m", "app", "migrate"]
    assert condition(stack["migrate"], "postgres") == "service_healthy"
    assert stack["api"]["command"] == ["python", "-m", "app", "run"]
    assert stack["worker"]["command"][:4] == ["python", "-m", "app", "worker"]
    for name in ("api", "worker"):
        assert condition(stack[name], "migrate") == "service_completed_successfully"
        assert condition(stack[name], "postgres") == "service_healthy"
        assert condition(stack[name], "redis") == "service_healthy"
    assert len({stack[name]["image"] for name in APP_SERVICES}) == 1, "one image"
    for name in ("api", "worker", "postgres", "redis"):
        assert stack[name].get("healthcheck", {}).get("test"), f"{name} has a healthcheck"
    assert "/health" in " ".join(stack["api"]["healthcheck"]["test"])
    assert "pg_isready" in " ".join(stack["postgres"]["healthcheck"]["test"])


def test_compose_development_settings_point_at_the_services(
    development: dict[str, Any],
) -> None:
    env = environment(services(development)["api"])
    assert env["ENVIRONMENT"] == "development"
    assert env["DB_HOST"] == "postgres"
    assert env["REDIS_URL"] == "redis://redis:6379/0"
    assert env["CELERY_BROKER_URL"].startswith("redis://redis:6379/")
    assert (env["SMTP_HOST"], env["SMTP_PORT"]) == ("mailpit", "1025")
    postgres = environment(services(development)["postgres"])
    assert (env["DB_USER"], env["DB_PASS"], env["DB_NAME"]) == (
        postgres["POSTGRES_USER"],
        postgres["POSTGRES_PASSWORD"],
        postgres["POSTGRES_DB"],
    )


def test_compose_api_and_worker_share_the_media_and_uploads_volume(
    development: dict[str, Any],
) -> None:
    stack = services(development)
    declared = set(development.get("volumes") or {})
    data_dirs = set()
    for name in ("api", "worker"):
        env = environment(stack[name])
        data_dir = env["DATA_DIR"]
        assert env["MEDIA_ROOT"].startswith(data_dir + "/"), "media under the shared directory"
        volume = mounts(stack[name]).get(data_dir)
        assert volume in declared, f"{name}: DATA_DIR is on a named volume"
        data_dirs.add((data_dir, volume, env["MEDIA_ROOT"]))
    assert len(data_dirs) == 1, "api and worker see the same files"


def test_compose_publishes_only_the_api_and_mailpit_and_only_on_loopback(
    development: dict[str, Any],
) -> None:
    stack = services(development)
    assert ("127.0.0.1", "8000", "8000") in ports(stack["api"])
    assert ("127.0.0.1", "8025", "8025") in ports(stack["mailpit"])
    for name in ("migrate", "worker", "postgres", "redis"):
        assert ports(stack[name]) == [], f"{name} is reached inside the Compose network only"


def test_compose_passes_the_app_only_variables_it_knows(development: dict[str, Any]) -> None:
    known = {name.upper() for name in Settings.model_fields} | NON_SETTINGS_VARIABLES
    for name in APP_SERVICES:
        unknown = set(environment(services(development)[name])) - known
        assert unknown == set(), f"{name}: not Inkwell settings"


def test_compose_production_runs_traefik_and_leaves_mailpit_out(
    production: dict[str, Any],
) -> None:
    running = started(production, ("production",))
    assert running >= {*APP_SERVICES, "postgres", "redis", "traefik"}
    assert "mailpit" not in running
    assert services(production)["traefik"]["profiles"] == ["production"]
    assert services(production)["traefik"]["image"].startswith("traefik:v3")


def test_compose_production_sets_production_settings(production: dict[str, Any]) -> None:
    known = {name.upper() for name in Settings.model_fields} | NON_SETTINGS_VARIABLES
    for name in APP_SERVICES:
        env = environment(services(production)[name])
        assert env["ENVIRONMENT"] == "production", name
        assert env["JWT_SECRET_KEY"] == PRODUCTION_VARIABLES["JWT_SECRET_KEY"]
        assert env["DB_PASS"] == PRODUCTION_VARIABLES["POSTGRES_PASSWORD"]
        assert env["PUBLIC_URL"] == f"https://{PRODUCTION_VARIABLES['DOMAIN']}"
        assert env["SMTP_HOST"] == PRODUCTION_VARIABLES["SMTP_HOST"]
        assert set(env) - known == set(), f"{name}: not Inkwell settings"
    postgres = environment(services(production)["postgres"])
    assert postgres["POSTGRES_PASSWORD"] == PRODUCTION_VARIABLES["POSTGRES_PASSWORD"]


def traefik_flags(config: dict[str, Any]) -> dict[str, str]:
    flags = {}
    for arg in services(config)["traefik"]["command"]:
        key, _, value = arg.removeprefix("--").partition("=")
        flags[key.lower()] = value
    return flags


def test_compose_traefik_redirects_to_https_and_gets_certificates(
    production: dict[str, Any],
) -> None:
    flags = traefik_flags(production)
    assert flags["entrypoints.web.address"] == ":80"
    assert flags["entrypoints.websecure.address"] == ":443"
    assert flags["entrypoints.web.http.redirections.entrypoint.to"] == "websecure"
    assert flags["entrypoints.web.http.redirections.entrypoint.scheme"] == "https"
    assert flags["providers.docker.exposedbydefault"] == "false"
    resolvers = {key.split(".")[1] for key in flags if key.startswith("certificatesresolvers.")}
    assert len(resolvers) == 1
    acme = f"certificatesresolvers.{resolvers.pop()}.acme"
    assert flags[f"{acme}.email"] == PRODUCTION_VARIABLES["ACME_EMAIL"]
    assert flags.get(f"{acme}.tlschallenge") == "true" or f"{acme}.httpchallenge" in flags
    storage_dir = str(Path(flags[f"{acme}.storage"]).parent)
    traefik = services(production)["traefik"]
    assert mounts(traefik).get(storage_dir) in set(production["volumes"]), "certificates kept"
    assert {published for _, published, _ in ports(traefik)} >= {"80", "443"}


def test_compose_api_is_routed_by_traefik_on_the_domain(production: dict[str, Any]) -> None:
    flags = traefik_flags(production)
    resolver = next(key.split(".")[1] for key in flags if key.startswith("certificatesresolvers"))
    labels = services(production)["api"]["labels"]
    assert labels["traefik.enable"] == "true"
    routers = {key.split(".")[3] for key in labels if key.startswith("traefik.http.routers.")}
    assert len(routers) == 1
    router = f"traefik.http.routers.{routers.pop()}"
    assert labels[f"{router}.rule"] == (
        f"Host(`{PRODUCTION_VARIABLES['DOMAIN']}`) && !PathPrefix(`/metrics`)"
    )
    assert labels[f"{router}.entrypoints"] == "websecure"
    assert labels[f"{router}.tls.certresolver"] == resolver


@pytest.mark.parametrize("missing", REQUIRED_IN_PRODUCTION)
def test_compose_production_refuses_to_start_without_a_required_variable(
    compose: Compose, missing: str
) -> None:
    variables = {k: v for k, v in PRODUCTION_VARIABLES.items() if k != missing}
    result = compose.run((BASE, PRODUCTION), ("production",), variables)
    assert result.returncode != 0
    assert missing in result.stderr


def test_compose_server_template_fills_every_required_variable(compose: Compose) -> None:
    template = ROOT / ".env.docker.example"
    text = template.read_text()
    for name in REQUIRED_IN_PRODUCTION:
        assert re.search(rf"^{name}=", text, re.M), f"{template.name} lists {name}"
    compose_file = re.search(r"^COMPOSE_FILE=(.*)$", text, re.M)
    assert compose_file
    assert compose_file.group(1).split(":") == [BASE, PRODUCTION]
    assert re.search(r"^COMPOSE_PROFILES=production$", text, re.M)
    # Its empty secrets are what the server's owner fills in.
    secrets = {"JWT_SECRET_KEY": "s" * 48, "POSTGRES_PASSWORD": "filled-in"}
    result = Compose(compose.command, template).run((BASE, PRODUCTION), ("production",), secrets)
    assert result.returncode == 0, result.stderr


# --- Dockerfile ------------------------------------------------------------------------------


@dataclass
class Instruction:
    keyword: str
    args: str


def parse_dockerfile(text: str) -> list[list[Instruction]]:
    """The instructions of each stage; comments dropped, `\\` continuations joined."""
    stages: list[list[Instruction]] = []
    logical = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        logical += stripped
        if logical.endswith("\\"):
            logical = logical[:-1].rstrip() + " "
            continue
        keyword, _, args = logical.partition(" ")
        instruction = Instruction(keyword.upper(), args.strip())
        logical = ""
        if instruction.keyword == "FROM":
            stages.append([])
        assert stages, "the Dockerfile starts with FROM"
        stages[-1].append(instruction)
    return stages


@pytest.fixture(scope="module")
def stages() -> list[list[Instruction]]:
    return parse_dockerfile((ROOT / "Dockerfile").read_text())


def find(stage: list[Instruction], keyword: str) -> list[Instruction]:
    return [instruction for instruction in stage if instruction.keyword == keyword]


def test_dockerfile_is_multi_stage_on_one_pinned_slim_python(
    stages: list[list[Instruction]],
) -> None:
    assert len(stages) >= 2
    bases = {stage[0].args.split()[0] for stage in stages}
    assert len(bases) == 1, "builder and runtime share the interpreter the venv points at"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", bases.pop())


def test_dockerfile_installs_the_locked_dependencies_before_copying_the_code(
    stages: list[list[Instruction]],
) -> None:
    builder = stages[0]
    uv_copy = next(i for i in find(builder, "COPY") if "astral-sh/uv" in i.args)
    assert f"uv:{makefile_uv_version()} " in uv_copy.args, "the Makefile's uv version"
    steps = [(i.keyword, i.args) for i in builder]
    deps = next(n for n, (k, a) in enumerate(steps) if k == "RUN" and "--no-install-project" in a)
    assert "--frozen" in steps[deps][1]
    assert "--mount=type=cache" in steps[deps][1]
    code = next(n for n, (k, a) in enumerate(steps) if k == "COPY" and a.split()[0] == "app")
    assert deps < code, "dependencies in a layer of their own, cached across code changes"
    copied_before = {
        source
        for keyword, args in steps[:deps]
        if keyword == "COPY" and "--from" not in args
        for source in args.split()[:-1]
    }
    assert copied_before == {"pyproject.toml", "uv.lock"}
    assert any(k == "RUN" and "uv sync" in a for k, a in steps[code:]), "then the project"


def test_dockerfile_runtime_runs_the_api_as_a_non_root_user(
    stages: list[list[Instruction]],
) -> None:
    runtime = stages[-1]
    users = find(runtime, "USER")
    assert users, "the final stage sets USER"
    user, _, group = users[-1].args.partition(":")
    assert user not in ("root", "0")
    assert group not in ("root", "0")
    assert json.loads(find(runtime, "CMD")[-1].args) == ["python", "-m", "app", "run"]
    assert "8000" in find(runtime, "EXPOSE")[-1].args.split()
    env = " ".join(i.args for i in find(runtime, "ENV"))
    for setting in ("HOST=0.0.0.0", "PORT=8000", "PYTHONUNBUFFERED=1"):
        assert setting in env


def test_dockerfile_healthcheck_calls_health_without_curl(
    stages: list[list[Instruction]],
) -> None:
    checks = find(stages[-1], "HEALTHCHECK")
    assert checks
    assert "/health" in checks[-1].args
    assert "urllib" in checks[-1].args
    assert "curl" not in checks[-1].args


def test_dockerignore_keeps_local_state_and_secrets_out() -> None:
    patterns = {
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert patterns >= {".git", ".venv", "data", ".env", "tests", "**/node_modules"}
    for needed in ("app", "migrations", "alembic.ini", "pyproject.toml", "uv.lock", "README.md"):
        assert needed not in patterns, f"{needed} is in the image"


# --- GitHub ----------------------------------------------------------------------------------


def workflow(name: str) -> dict[Any, Any]:
    data: dict[Any, Any] = load_yaml(ROOT / ".github" / "workflows" / name)
    # YAML 1.1 reads the key `on` as true.
    data["on"] = data.pop(True, data.get("on"))
    return data


def steps(job: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = job["steps"]
    return found


def runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in steps(job))


def uses(job: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        step["uses"].split("@")[0]: step.get("with", {}) for step in steps(job) if "uses" in step
    }


def test_ci_workflow_lints_tests_both_modes_checks_migrations_and_builds() -> None:
    ci = workflow("ci.yml")
    assert "pull_request" in ci["on"]
    assert ci["on"]["push"]["branches"] == ["main"]
    assert ci["permissions"] == {"contents": "read"}
    assert ci["concurrency"]["cancel-in-progress"] is True
    jobs = ci["jobs"]
    assert set(jobs) >= {"lint", "test", "migrations", "docker"}

    assert "make lint" in runs(jobs["lint"])
    assert uses(jobs["lint"])["astral-sh/setup-uv"]["version"] in (
        makefile_uv_version(),
        "${{ env.UV_VERSION }}",
    )
    assert ci["env"]["UV_VERSION"] == makefile_uv_version()

    test = jobs["test"]
    assert set(test["services"]) >= {"postgres", "redis"}
    modes = test["strategy"]["matrix"]["mode"]
    commands = {runs(test).replace("${{ matrix.mode }}", mode) for mode in modes}
    assert any("make test-embedded" in c for c in commands)
    assert any("make test-services" in c for c in commands)
    assert "TEST_POSTGRES_URL" in test["env"]
    assert "redis-server" in runs(test), "the services run starts its own redis-server"

    migrations = runs(jobs["migrations"])
    for command in ("upgrade head", "downgrade -1", "alembic check"):
        assert command in migrations
    assert "postgres" in jobs["migrations"]["services"]

    docker = jobs["docker"]
    assert uses(docker)["docker/build-push-action"]["push"] is False
    assert "type=gha" in uses(docker)["docker/build-push-action"]["cache-from"]
    assert "docker compose config" in runs(docker)


def test_release_workflow_pushes_tags_to_ghcr_and_deploys_only_when_enabled() -> None:
    release = workflow("release.yml")
    assert release["on"]["push"]["tags"] == ["v*"]
    jobs = release["jobs"]
    image = jobs["image"]
    assert image["permissions"]["packages"] == "write"
    meta = uses(image)["docker/metadata-action"]
    assert meta["images"] == "ghcr.io/${{ github.repository }}"
    assert "type=semver" in meta["tags"]
    assert "type=sha" in meta["tags"]
    assert uses(image)["docker/build-push-action"]["push"] is True

    deploy = jobs["deploy"]
    assert deploy["needs"] == "image"
    assert deploy["if"] == "vars.DEPLOY_ENABLED == 'true'"
    assert deploy["environment"] == "production"
    script = runs(deploy)
    for command in ("docker compose pull", "docker compose run --rm migrate", "docker compose up"):
        assert command in script


def test_every_action_is_pinned_to_a_major_version_or_a_commit() -> None:
    for name in ("ci.yml", "release.yml"):
        for job in workflow(name)["jobs"].values():
            for step in job.get("steps", []):
                if "uses" in step:
                    assert re.search(r"@(v\d+|[0-9a-f]{40})$", step["uses"]), step["uses"]


def test_dependabot_updates_python_actions_and_images_weekly() -> None:
    config = load_yaml(ROOT / ".github" / "dependabot.yml")
    updates = {update["package-ecosystem"]: update for update in config["updates"]}
    assert set(updates) >= {"uv", "github-actions", "docker"}
    for update in updates.values():
        assert update["schedule"]["interval"] == "weekly"
        groups = update.get("groups", {}).values()
        assert any(set(group["update-types"]) == {"minor", "patch"} for group in groups)
