"""Operations: production checks, the embedded PostgreSQL, `manage.py dev`, and the compose file."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import psutil
import psycopg
import pytest
from django.db import connection

from config import embedded
from tests.support.processes import MANAGE, ROOT, free_port, production_env


def _check_deploy(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MANAGE, "check", "--deploy", "--fail-level", "WARNING", *args],
        cwd=ROOT,
        env=production_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- production settings -----------------------------------------------------------------------------------
def test_check_deploy_security_is_clean_with_debug_off():
    result = _check_deploy("--tag", "security")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_deploy_fail_level_warning_is_clean_with_debug_off():
    result = _check_deploy()
    assert result.returncode == 0, result.stdout + result.stderr


def test_settings_refuse_to_start_without_a_secret_key_when_debug_is_off():
    env = production_env()
    env.pop("DJANGO_SECRET_KEY")
    env.pop("SUANLI_ALLOW_INSECURE_KEY", None)
    result = subprocess.run(
        [sys.executable, MANAGE, "check"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY must be set" in result.stderr


# --- the embedded PostgreSQL (the default when DATABASE_URL is unset) ------------------------------------------
def test_embedded_postgres_is_18_with_btree_gist(pg_base):
    url = embedded.ensure_running(pg_base)
    try:
        assert embedded.is_running(pg_base)
        assert embedded.url(pg_base) == url
        with psycopg.connect(url, autocommit=True) as conn:
            assert conn.info.server_version // 10000 == 18
            conn.execute("CREATE EXTENSION IF NOT EXISTS btree_gist")
            # The invariant the scheduler relies on: one card, no two overlapping holds.
            conn.execute(
                "CREATE TABLE hold (gpu int, period tstzrange, EXCLUDE USING gist (gpu WITH =, period WITH &&))"
            )
            conn.execute("INSERT INTO hold VALUES (1, '[2026-01-01 00:00Z, 2026-01-02 00:00Z)')")
            conn.execute("INSERT INTO hold VALUES (1, '[2026-01-02 00:00Z, 2026-01-03 00:00Z)')")  # touching: fine
            with pytest.raises(psycopg.errors.ExclusionViolation):
                conn.execute("INSERT INTO hold VALUES (1, '[2026-01-01 12:00Z, 2026-01-01 13:00Z)')")
        # A second call joins the running server instead of starting another.
        assert embedded.ensure_running(pg_base) == url
    finally:
        assert embedded.stop(pg_base)
    assert not embedded.is_running(pg_base)
    assert not embedded.stop(pg_base)


def _fresh_clone_env(pg_base: Path) -> dict[str, str]:
    """The environment of a fresh clone: no debug, no secret key, no mail backend, no DATABASE_URL (the embedded
    server, its data under `pg_base`)."""
    env = dict(os.environ)
    for name in (
        "DJANGO_DEBUG",
        "DJANGO_SECRET_KEY",
        "SUANLI_ALLOW_INSECURE_KEY",
        "EMAIL_BACKEND",
        "SUANLI_ALLOW_CONSOLE_EMAIL",
        "DATABASE_URL",
    ):
        env.pop(name, None)
    env["EMBEDDED_PG_DIR"] = str(pg_base / "pgdata")
    return env


def _readme_embedded_db_commands() -> list[list[str]]:
    """The README's `manage.py embedded_db ...` lines, in order, comments dropped, each as an argument list."""
    readme = (ROOT / "README.md").read_text()
    lines = re.findall(r"^(\.venv/bin/python manage\.py embedded_db [a-z]+)", readme, flags=re.MULTILINE)
    return [line.split() for line in lines]


def test_the_readme_embedded_db_commands_run_as_written_on_a_fresh_clone(pg_base):
    """Issue 17: each README line ran into "DJANGO_SECRET_KEY must be set" unless debug was on. They serve no request,
    so they run without the key and mail settings; the interpreter is this one (the checkout's .venv in practice)."""
    commands = _readme_embedded_db_commands()
    actions = [argv[-1] for argv in commands]
    assert actions == ["start", "url", "status", "stop"], actions
    env = _fresh_clone_env(pg_base)

    def run(argv: list[str]) -> subprocess.CompletedProcess:
        assert argv[:2] == [".venv/bin/python", "manage.py"]
        return subprocess.run(
            [sys.executable, MANAGE, *argv[2:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    results = {}
    try:
        for argv in commands:
            results[argv[-1]] = result = run(argv)
            output = result.stdout + result.stderr
            assert "DJANGO_SECRET_KEY" not in output and "EMAIL_BACKEND" not in output, output
            assert result.returncode == 0, (argv, output)
    finally:
        if embedded.is_running(pg_base):
            embedded.stop(pg_base)
    url = embedded.url(pg_base)
    assert results["start"].stdout.strip() == f"started: {url}"
    assert results["url"].stdout.strip() == url
    assert results["status"].stdout.startswith(f"running: {url}")
    assert results["stop"].stdout.startswith("stopped")
    assert not embedded.is_running(pg_base)
    # Stopped: `status` says so with exit status 3, as the README's comment promises.
    status = run(commands[actions.index("status")])
    assert status.returncode == 3, status.stdout + status.stderr
    assert status.stdout.startswith("stopped")


def test_a_fresh_clone_still_refuses_to_serve_without_a_secret_key(pg_base):
    """The tooling exemption is for embedded_db, help and version alone: the web server and every other command
    still refuse to start with debug off and no key, and they start no database on the way."""
    env = _fresh_clone_env(pg_base)
    for argv in (["check"], ["runserver", "--noreload", str(free_port())], ["migrate", "--check"]):
        result = subprocess.run(
            [sys.executable, MANAGE, *argv], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode != 0, argv
        assert "DJANGO_SECRET_KEY must be set when DJANGO_DEBUG is off" in result.stderr, (argv, result.stderr)
    assert not embedded.is_running(pg_base)


# --- manage.py dev -------------------------------------------------------------------------------------------
def _wait_healthy(port: int, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"manage.py dev exited early:\n{log.read_text()}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"/healthz did not answer within {timeout} s:\n{log.read_text()}")


def _start_dev(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[subprocess.Popen, Path, int]:
    port = free_port()
    log = tmp_path / "dev.log"
    env = {**env, "SUANLI_VAR_DIR": str(tmp_path / "var"), "DJANGO_DEBUG": "1"}
    env.pop("REDIS_URL", None)  # the server-less broker, as on a fresh machine
    proc = subprocess.Popen(  # noqa: S603
        [sys.executable, MANAGE, "dev", "--port", str(port), "--concurrency", "1", *args],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
    )
    return proc, log, port


def _descendants(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def _assert_all_gone(procs: list[psutil.Process], log: Path) -> None:
    _, alive = psutil.wait_procs(procs, timeout=10)
    alive = [p for p in alive if p.status() != psutil.STATUS_ZOMBIE]
    assert not alive, f"left running: {alive}\n{log.read_text()}"


@pytest.mark.slow  # starts manage.py dev: the web server, a worker, beat
def test_dev_runs_everything_on_the_embedded_database_and_stops_it_all_on_sigint(tmp_path, pg_base):
    env = dict(os.environ)
    env.pop("DATABASE_URL")
    proc, log, port = _start_dev(tmp_path, env)
    try:
        _wait_healthy(port, proc, log, timeout=180)
        # The simulated agents start once the site answers, and their first reports are taken.
        deadline = time.monotonic() + 60
        while log.read_text().count("POST /api/v1/agent/reports/") < 8 and time.monotonic() < deadline:
            time.sleep(0.5)
        children = _descendants(proc.pid)
        names = " ".join(" ".join(p.cmdline()) for p in children)
        assert "runserver" in names and " worker " in names and " beat " in names, names
        assert names.count(" --simulate ") == 8, names
        assert embedded.is_running(pg_base)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    output = log.read_text()
    assert "started embedded PostgreSQL 18" in output
    # Issue 17: no agent ever found the platform unreachable (they start after the site answers).
    assert "platform unreachable" not in output, output
    assert output.index("Suanli is up") < output.index("POST /api/v1/agent/reports/"), output
    # The demo's API example names the port the site really answers on.
    assert f"http://127.0.0.1:{port}/api/v1/gpu-models/" in output
    assert "stopping the embedded PostgreSQL" in output
    assert not embedded.is_running(pg_base), output
    _assert_all_gone(children, log)


@pytest.mark.slow  # starts manage.py dev: the web server, a worker, beat
@pytest.mark.django_db
def test_dev_stops_the_rest_and_fails_when_a_child_dies(tmp_path):
    db = connection.settings_dict  # the test database: already migrated, and --no-seed writes nothing
    host = db["HOST"] or "127.0.0.1"
    password = f":{db['PASSWORD']}" if db["PASSWORD"] else ""
    url = f"postgres://{db['USER']}{password}@{host}:{db['PORT'] or 5432}/{db['NAME']}"
    proc, log, port = _start_dev(tmp_path, {**os.environ, "DATABASE_URL": url}, "--no-seed")
    try:
        _wait_healthy(port, proc, log, timeout=120)
        children = _descendants(proc.pid)
        web = next(p for p in children if "runserver" in p.cmdline())
        web.kill()
        assert proc.wait(60) != 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "web exited with status" in log.read_text()
    _assert_all_gone(children, log)


# --- docker-compose.yml and Dockerfile -------------------------------------------------------------------------
def test_compose_file_has_the_production_topology():
    yaml = pytest.importorskip("yaml")  # PyYAML comes with drf-spectacular
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    for name in ("postgres", "redis", "web", "worker", "beat"):
        assert name in services, name
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["postgres"]["image"].startswith("postgres:18")
    assert services["redis"]["image"].startswith("redis:7")
    assert "gunicorn config.wsgi" in services["web"]["command"]
    assert "celery -A config worker" in services["worker"]["command"]
    assert "celery -A config beat" in services["beat"]["command"]
    assert "migrate" in services["migrate"]["command"]
    for name in ("web", "worker", "beat"):
        depends = services[name]["depends_on"]
        assert depends["postgres"]["condition"] == "service_healthy"
        assert depends["redis"]["condition"] == "service_healthy"
        assert depends["migrate"]["condition"] == "service_completed_successfully"
        env = services[name]["environment"]
        assert env["DJANGO_DEBUG"] == "0"
        assert {"DATABASE_URL", "REDIS_URL", "DJANGO_SECRET_KEY", "DJANGO_ALLOWED_HOSTS"} <= set(env)
        assert ":?" in env["DJANGO_SECRET_KEY"], "the secret key must be required, never defaulted"
    named = set(compose["volumes"])
    for name in ("postgres", "redis", "beat"):
        mounted = {v.split(":")[0] for v in services[name]["volumes"]}
        assert mounted & named, f"{name} keeps its data on no named volume"


def test_dockerfile_builds_from_python_311_slim_and_collects_static():
    text = (ROOT / "Dockerfile").read_text()
    assert "FROM python:3.11-slim" in text
    assert "collectstatic --noinput" in text
    assert "\nUSER " in text, "the image runs as an unprivileged user"


# --- README ---------------------------------------------------------------------------------------------------
def test_every_environment_variable_the_settings_read_is_in_the_readme_configuration_table():
    names: set[str] = set()
    for module in ("settings.py", "embedded.py"):
        text = (ROOT / "config" / module).read_text()
        names |= set(re.findall(r'env_(?:str|bool|int|list)\(\s*"([A-Z][A-Z0-9_]*)"', text))
        names |= set(re.findall(r'os\.environ(?:\.get)?\(\s*"([A-Z][A-Z0-9_]*)"', text))
        names |= set(re.findall(r'os\.environ\[\s*"([A-Z][A-Z0-9_]*)"', text))
    assert {"DJANGO_SECRET_KEY", "DATABASE_URL", "EMBEDDED_PG_DIR"} <= names  # the patterns still match
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    missing = sorted(name for name in names if f"`{name}`" not in table)
    assert not missing, f"add these to README.md, Configuration: {missing}"
