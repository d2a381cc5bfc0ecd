"""The `suanli` command is a program of its own (DESIGN.md: cli/ never imports Django): its modules load without
Django or any of the platform's packages, and its own pyproject (cli/pyproject.toml) installs it with only its
declared dependencies."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
import tomllib

import cli
from tests.cli.conftest import REPO

PLATFORM = (
    "django",
    "rest_framework",
    "accounts",
    "inventory",
    "scheduler",
    "workloads",
    "billing",
    "marketplace",
    "config",
    "agents",
)


def test_importing_every_cli_module_leaves_django_and_the_platform_out_of_sys_modules():
    modules = sorted(m.name for m in pkgutil.walk_packages(cli.__path__, prefix="cli.") if m.name != "cli.__main__")
    assert {"cli.main", "cli.client", "cli.config", "cli.query", "cli.customer", "cli.account"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        f"leaked = sorted(m for m in sys.modules if m.split('.')[0] in {PLATFORM!r})\n"
        "print(leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_the_cli_package_imports_nothing_from_the_platform():
    for path in (REPO / "cli").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                assert name.split(".")[0] not in PLATFORM, (path.name, node.lineno, name)


def test_its_own_pyproject_declares_the_suanli_script_and_only_client_libraries():
    project = tomllib.loads((REPO / "cli" / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"suanli": "cli.main:main"}
    names = {dep.split(">")[0].split("<")[0].split("=")[0].strip().lower() for dep in project["dependencies"]}
    assert names == {"click", "rich", "requests", "platformdirs"}
    root = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert root["scripts"]["suanli"] == "cli.main:main"  # the platform's install has the command too
    assert set(project["dependencies"]) <= set(root["dependencies"])


def test_the_command_runs_from_a_copy_of_its_package_alone(tmp_path):
    """Nothing of the repository beside cli/ is needed: a copy of the package, on its own, answers --help."""
    import shutil

    shutil.copytree(REPO / "cli", tmp_path / "cli", ignore=shutil.ignore_patterns("__pycache__"))
    result = subprocess.run(
        [sys.executable, "-c", "import sys; sys.argv[0] = 'suanli'; from cli.main import main; main()", "--help"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path), "LANG": "C.UTF-8"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "leases" in result.stdout and "offers" in result.stdout
