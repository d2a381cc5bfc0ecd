"""The `suanli` command under test: run as a real subprocess (`python -m cli`, what the console script runs)
against Django's live server on loopback, with a config directory of the test's own; its `--json` output is
checked against the site's own OpenAPI schema (/api/schema/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import jsonschema
import pytest
import requests
from django.conf import settings

REPO = Path(settings.BASE_DIR)


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self):
        return json.loads(self.out)


class Suanli:
    """`suanli ...` as a user at a shell: environment of its own, English unless a test asks otherwise."""

    def __init__(self, url: str, home: Path):
        self.url = url
        self.home = home
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(home),
            "SUANLI_CONFIG_DIR": str(home / "config"),
            "SUANLI_API_URL": url,
            "LANG": "C.UTF-8",
            "COLUMNS": "200",
            "PYTHONPATH": str(REPO),
        }

    def __call__(self, *args: str, input: str | None = None, env: dict | None = None, timeout: int = 120) -> Run:
        result = subprocess.run(
            [sys.executable, "-m", "cli", *args],
            cwd=self.home,
            env={**self.env, **(env or {})},
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return Run(result.returncode, result.stdout, result.stderr)

    def ok(self, *args: str, **kw) -> Run:
        run = self(*args, **kw)
        assert run.code == 0, (args, run.code, run.out, run.err)
        return run

    def login(self, persona) -> None:
        """Signed in with the persona's API key, acting for its organisation."""
        self.ok("login", "--api-key", "-", "--org", str(persona.org.pk), input=persona.token + "\n")


@pytest.fixture
def suanli(live_server, tmp_path) -> Suanli:
    return Suanli(live_server.url, tmp_path)


@pytest.fixture(scope="session")
def openapi(live_server) -> dict:
    response = requests.get(f"{live_server.url}/api/schema/", params={"format": "json"}, timeout=60)
    assert response.status_code == 200, response.text[:200]
    return response.json()


def _json_schema(node, components: dict, depth: int = 0):
    """OpenAPI 3.0 to JSON Schema: `$ref`s inlined, `nullable` as a null alternative."""
    assert depth < 40, "a recursive schema"
    if isinstance(node, list):
        return [_json_schema(item, components, depth + 1) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        return _json_schema(components[node["$ref"].rsplit("/", 1)[1]], components, depth + 1)
    out = {
        k: _json_schema(v, components, depth + 1)
        for k, v in node.items()
        if k not in {"nullable", "readOnly", "writeOnly"}
    }
    if node.get("nullable"):
        return {"anyOf": [out, {"type": "null"}]}
    return out


def response_schema(openapi: dict, path: str, method: str = "get", status: str = "200") -> dict:
    operation = openapi["paths"][path][method]
    content = operation["responses"][status]["content"]["application/json"]["schema"]
    return _json_schema(content, openapi["components"]["schemas"])


def item_schema(openapi: dict, path: str) -> dict:
    """The schema of one item of a list endpoint (paginated or a plain array)."""
    whole = response_schema(openapi, path)
    if whole.get("type") == "array":
        return whole["items"]
    return whole["properties"]["results"]["items"]


def assert_valid(data, schema: dict) -> None:
    jsonschema.validate(data, schema, format_checker=None)


def assert_items_valid(items: list, openapi: dict, path: str) -> None:
    schema = item_schema(openapi, path)
    for item in items:
        assert_valid(item, schema)


# The workload tests' enrolled server and its agent (signed reports through the real API), shared.
from tests.workloads.conftest import _forget_telemetry_partitions, h100  # noqa: E402, F401
