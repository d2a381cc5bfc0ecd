import pkgutil
import subprocess
import sys

import agents
from tests.agents.conftest import REPO


def test_importing_every_agent_module_leaves_django_out_of_sys_modules():
    modules = sorted(
        m.name for m in pkgutil.walk_packages(agents.__path__, prefix="agents.") if m.name != "agents.__main__"
    )
    assert {"agents.cli", "agents.client", "agents.config", "agents.nvml", "agents.simulate"} <= set(modules)
    assert {"agents.workloads", "agents.runtime.docker_runtime", "agents.runtime.host"} <= set(modules)
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'django' or m.startswith(('django.', 'rest_framework')))\n"
        "leaked += ['docker'] if 'docker' in sys.modules else []  # imported only when the Docker runtime is made\n"
        "print(leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == "[]"


def test_the_agent_package_imports_nothing_from_the_platform():
    import pathlib

    for path in pathlib.Path(agents.__path__[0]).rglob("*.py"):
        text = path.read_text()
        layers = (
            "django",
            "rest_framework",
            "inventory",
            "accounts",
            "scheduler",
            "workloads",
            "billing",
            "marketplace",
            "config.",
        )
        for layer in layers:
            assert f"import {layer}" not in text and f"from {layer}" not in text, (path.name, layer)
