"""The host agent's package as the site serves it: a wheel of `agents/` (the `suanli-agent` distribution), built
from this checkout in memory, byte for byte the same on every build of the same sources (fixed file order and
timestamps), so its SHA-256 is stable and the install line can pin it (`pip install URL#sha256=...`).

The platform never imports the agent (it is a separate program, ARCHITECTURE.md): the version is read from
`agents/__init__.py`'s text. `manage.py build_agent_wheel DIR` writes the same file for a release or a mirror.
"""

from __future__ import annotations

import ast
import base64
import functools
import hashlib
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings

DISTRIBUTION = "suanli_agent"
# A fixed date for every file of the wheel (zip's earliest is 1980): the same sources give the same bytes.
_EPOCH = (1980, 1, 1, 0, 0, 0)
_REQUIRES = [
    "Requires-Dist: nvidia-ml-py>=12.560",
    "Provides-Extra: docker",
    'Requires-Dist: docker<8,>=7.1; extra == "docker"',
]


@dataclass(frozen=True)
class AgentWheel:
    filename: str
    version: str
    content: bytes
    sha256: str


def agent_dir() -> Path:
    return Path(settings.BASE_DIR) / "agents"


def agent_version() -> str:
    """`__version__` of agents/__init__.py, read without importing the agent."""
    tree = ast.parse((agent_dir() / "__init__.py").read_text(encoding="utf-8"))
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__version__" for t in node.targets):
            if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                return node.value.value
    raise RuntimeError("agents/__init__.py names no __version__")


def wheel_filename(version: str | None = None) -> str:
    return f"{DISTRIBUTION}-{version or agent_version()}-py3-none-any.whl"


def _sources() -> list[tuple[str, bytes]]:
    root = agent_dir()
    files = sorted(p for p in root.rglob("*.py") if "__pycache__" not in p.parts)
    return [(p.relative_to(root.parent).as_posix(), p.read_bytes()) for p in files]


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _metadata(version: str) -> bytes:
    readme = (agent_dir() / "README.md").read_text(encoding="utf-8")
    lines = [
        "Metadata-Version: 2.1",
        "Name: suanli-agent",
        f"Version: {version}",
        "Summary: The Suanli host agent: reports a GPU server's cards to the Suanli marketplace and runs its workloads",
        "License: Apache-2.0",
        "Requires-Python: >=3.11",
        *_REQUIRES,
        "Description-Content-Type: text/markdown",
        "",
        readme,
    ]
    return "\n".join(lines).encode()


def build() -> AgentWheel:
    """The wheel of the current sources (not cached: see `current`)."""
    version = agent_version()
    info = f"{DISTRIBUTION}-{version}.dist-info"
    files = [
        *_sources(),
        (f"{info}/METADATA", _metadata(version)),
        (
            f"{info}/WHEEL",
            b"Wheel-Version: 1.0\nGenerator: suanli (inventory/agent_package.py)\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n",
        ),
        (f"{info}/entry_points.txt", b"[console_scripts]\nsuanli-agent = agents.cli:main\n"),
        (f"{info}/top_level.txt", b"agents\n"),
    ]
    record = "".join(f"{name},{_record_hash(data)},{len(data)}\n" for name, data in files) + f"{info}/RECORD,,\n"
    files.append((f"{info}/RECORD", record.encode()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as wheel:
        for name, data in files:
            entry = zipfile.ZipInfo(name, date_time=_EPOCH)
            entry.compress_type = zipfile.ZIP_DEFLATED
            entry.external_attr = 0o644 << 16
            wheel.writestr(entry, data)
    content = buffer.getvalue()
    return AgentWheel(wheel_filename(version), version, content, hashlib.sha256(content).hexdigest())


@functools.cache
def current() -> AgentWheel:
    """The wheel this process serves, built once on first use (the sources do not change under a running site;
    the development server restarts when they do)."""
    return build()
