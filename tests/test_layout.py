"""The layout's rules (SPEC §2), read from the imports of every module: each layer imports only
what its room allows, so the arrows keep pointing one way as the code grows."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

APP = Path(__file__).resolve().parent.parent / "app"
FRAMEWORKS = ("fastapi", "starlette")
ROOT_MODULES = {
    "__init__.py",
    "__main__.py",
    "main.py",
    "config.py",
    "dependencies.py",
    "errors.py",
}
# SPEC §2's folders (`conduit` once it lands); `templates` holds the pages' and e-mails' files.
ROOT_FOLDERS = {
    "database",
    "models",
    "schemas",
    "services",
    "routes",
    "stores",
    "tasks",
    "core",
    "web",
    "conduit",
    "cli",
    "templates",
}


def imported(path: Path) -> set[str]:
    """Every module a file imports, absolute (`from app import x` counts as `app.x` too)."""
    package = ".".join(path.relative_to(APP.parent).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (APP / folder).rglob("*.py"))


def within(names: set[str], *prefixes: str) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(f"{p}.") for p in prefixes))


def cases(paths: list[Path]) -> list[object]:
    params: list[object] = []
    for path in paths:
        name = str(path.relative_to(APP))
        params.append(pytest.param(path, id=name))
    return params


@pytest.mark.parametrize("path", cases([*modules("services", "core"), APP / "errors.py"]))
def test_services_core_and_errors_import_no_web_framework(path: Path) -> None:
    assert within(imported(path), *FRAMEWORKS) == []


@pytest.mark.parametrize("path", cases(modules("services")))
def test_services_import_nothing_from_the_tasks(path: Path) -> None:
    """Tasks call services, never the reverse."""
    assert within(imported(path), "app.tasks") == []


@pytest.mark.parametrize("path", cases([APP / "tasks" / "jobs.py"]))
def test_the_jobs_import_no_models(path: Path) -> None:
    """A job is a thin call into a service; the service reads and writes the rows."""
    assert within(imported(path), "app.models") == []


@pytest.mark.parametrize("path", cases(modules("models")))
def test_models_import_no_schemas(path: Path) -> None:
    assert within(imported(path), "app.schemas") == []


@pytest.mark.parametrize("path", cases(modules("schemas")))
def test_schemas_import_no_models(path: Path) -> None:
    assert within(imported(path), "app.models") == []


def test_the_app_root_holds_only_its_few_modules() -> None:
    files = {p.name for p in APP.iterdir() if p.is_file() and p.suffix == ".py"}
    folders = {p.name for p in APP.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert files <= ROOT_MODULES, f"move into a folder: {sorted(files - ROOT_MODULES)}"
    assert folders <= ROOT_FOLDERS, f"not a room of SPEC §2: {sorted(folders - ROOT_FOLDERS)}"
    assert ROOT_MODULES - {"__init__.py"} <= files


def test_the_rules_read_real_imports() -> None:
    """The reader sees what it must, so that an empty answer above means something."""
    assert "fastapi" in imported(APP / "main.py")
    assert "app.models.User" in imported(APP / "services" / "users.py")
    assert "app.errors.AppError" in imported(APP / "web" / "problems.py")


def test_security_and_the_rate_limiter_load_no_web_framework() -> None:
    """Not even through what they import (they raise domain errors, which know no HTTP)."""
    probe = (
        "import sys, app.errors, app.core.security, app.core.context, app.stores.rate_limit\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('fastapi', 'starlette')))\n"
    )
    result = subprocess.run(  # noqa: S603 - our own fixed arguments
        [sys.executable, "-c", probe],
        cwd=APP.parent,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert result.stdout.strip() == "[]"


def test_no_import_cycle() -> None:
    """Among the imports that run when a module loads (not those inside functions or under
    TYPE_CHECKING), no module of the app reaches itself again."""
    names = {
        ".".join(p.relative_to(APP.parent).with_suffix("").parts).removesuffix(".__init__"): p
        for p in APP.rglob("*.py")
    }
    graph = {name: load_time_imports(path, names) for name, path in names.items()}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = "open"
        for target in sorted(graph[name]):
            if state.get(target) == "open":
                cycles.append([*trail[trail.index(target) :], target])
            elif target not in state:
                visit(target, [*trail, target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert cycles == []


def load_time_imports(path: Path, names: dict[str, Path]) -> set[str]:
    found: set[str] = set()

    def read(body: list[ast.stmt]) -> None:
        for node in body:
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                for alias in node.names:
                    submodule = f"{node.module}.{alias.name}"
                    found.add(submodule if submodule in names else node.module)
            elif isinstance(node, ast.If) and not (
                isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
            ):
                read(node.body)
                read(node.orelse)
            elif isinstance(node, ast.Try):
                read(node.body)

    read(ast.parse(path.read_text(), str(path)).body)
    return found & names.keys()
