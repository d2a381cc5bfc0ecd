"""The layout ARCHITECTURE.md describes, held by the code: every production module says what it holds, and each app
imports only from the apps below it (INSTALLED_APPS order), never through `apps.get_model` either.

Read from the source with `ast`, so a function-level or TYPE_CHECKING import counts like any other.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

from django.conf import settings

ROOT = Path(settings.BASE_DIR)
# Ours, lowest layer first, as INSTALLED_APPS lists them; config/ sits above them all. agents/ is a program of its
# own (tests/agents/test_standalone.py holds it apart), and so is cli/ (tests/cli/test_standalone.py).
LAYERS = ["accounts", "inventory", "scheduler", "workloads", "billing", "marketplace"]
PACKAGES = [*LAYERS, "config", "agents", "cli"]
MODEL_FIELDS = {"ForeignKey", "OneToOneField", "ManyToManyField"}


def _modules(*, migrations: bool = True) -> Iterator[tuple[str, Path]]:
    """(package, path) of every production module: the apps, config/, agents/ and manage.py."""
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            if migrations or "migrations" not in path.relative_to(ROOT).parts:
                yield package, path
    yield "", ROOT / "manage.py"


def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def _imported(node: ast.AST, package: str) -> list[str]:
    """The top-level packages `node` imports (a relative import stays in its own package)."""
    if isinstance(node, ast.Import):
        return [alias.name.split(".")[0] for alias in node.names]
    if isinstance(node, ast.ImportFrom):
        return [package] if node.level else [(node.module or "").split(".")[0]]
    return []


def _model_reference(node: ast.AST) -> str | None:
    """The app label a call names a model of: `apps.get_model("scheduler", ...)`, `get_model("scheduler.X")`, or
    a relation to `"scheduler.Allocation"`."""
    if not isinstance(node, ast.Call) or not node.args:
        return None
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    first = node.args[0]
    if name not in {"get_model", *MODEL_FIELDS} or not isinstance(first, ast.Constant):
        return None
    if not isinstance(first.value, str) or (name in MODEL_FIELDS and "." not in first.value):
        return None
    return first.value.split(".")[0]


def _edges(package: str, path: Path) -> Iterator[tuple[int, str, str]]:
    """(line, how, package) for every other package `path` depends on."""
    for node in ast.walk(_tree(path)):
        for target in _imported(node, package):
            yield node.lineno, "import", target
        label = _model_reference(node)
        if label is not None:
            yield node.lineno, "model reference", label


def test_the_layers_are_the_installed_apps_in_order():
    ours = [app for app in settings.INSTALLED_APPS if app in PACKAGES]
    assert ours == [*LAYERS, "config"], "ARCHITECTURE.md and this test name the layers; change them together"


def test_every_production_module_opens_with_a_docstring_saying_what_it_holds():
    missing = [
        str(path.relative_to(ROOT))
        for _, path in _modules(migrations=False)
        if path.read_text(encoding="utf-8").strip() and not ast.get_docstring(_tree(path))
    ]
    assert not missing, f"these modules open without a docstring: {missing}"


def test_no_app_reaches_a_layer_above_it_or_config():
    upward = []
    for package, path in _modules():
        if package not in LAYERS:
            continue
        for line, how, target in _edges(package, path):
            above = target in LAYERS and LAYERS.index(target) > LAYERS.index(package)
            if above or target == "config":
                upward.append(f"{path.relative_to(ROOT)}:{line} {how} of {target}")
    assert not upward, "a lower layer reaches up (let the upper layer pass it down):\n" + "\n".join(upward)
