"""Faults the platform must survive, against real servers: PostgreSQL restarted under a running site."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from config import embedded
from tests.test_ops import MANAGE, ROOT, _free_port, _production_env, pg_base  # noqa: F401 - pg_base is a fixture


def _get(port: int, path: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s; last: {last}")


def test_a_postgresql_restart_answers_503_json_and_the_site_recovers_without_a_restart(pg_base, tmp_path):  # noqa: F811
    url = embedded.start(pg_base)
    env = _production_env(
        DATABASE_URL=url, SUANLI_VAR_DIR=str(tmp_path / "var"), DB_POOL_TIMEOUT="2", SECURE_SSL_REDIRECT="0"
    )
    subprocess.run([sys.executable, MANAGE, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    port = _free_port()
    log = Path(tmp_path / "gunicorn.log")
    web = subprocess.Popen(  # noqa: S603
        [
            sys.executable,
            "-m",
            "gunicorn",
            "config.wsgi",
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "1",
            "--threads",
            "4",
            "--timeout",
            "60",
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        _until(lambda: _get(port, "/api/v1/gpu-models/")[0] == 200 if _alive(port) else False, 60, "the site up")
        assert embedded.stop(pg_base)
        status, headers, body = _get(port, "/api/v1/gpu-models/")
        assert status == 503, (status, body, log.read_text()[-2000:])
        assert body["error"]["code"] == "database_unavailable"
        assert headers.get("Retry-After") == "5"
        embedded.start(pg_base)
        _until(lambda: _get(port, "/api/v1/gpu-models/")[0] == 200, 60, "the site back, same process")
        assert web.poll() is None
        status, _headers, models = _get(port, "/api/v1/gpu-models/")
        assert status == 200 and len(models) >= 12
    finally:
        web.terminate()
        web.wait(timeout=30)


def _alive(port: int) -> bool:
    try:
        return _get(port, "/healthz")[0] == 200
    except OSError:
        return False
