"""The README's second command on a bare machine (issue 17): `scripts/test` with no DATABASE_URL or REDIS_URL and no
server of the machine's to fall back on starts an embedded PostgreSQL and a Redis of its own, runs the checks and
the tests on them, and stops both; what it cannot set up is said in one sentence, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.support.processes import ROOT

pytestmark = pytest.mark.slow

# A test the run under test collects in its clone of the repository: it records which servers the suite ran on,
# and proves it used them (a table in the test database, a key through the cache).
PROBE = """\"\"\"Which servers the suite ran on (tests/test_scripts.py writes this file into its clone).\"\"\"

import json
import os

from django.conf import settings
from django.core.cache import cache
from django.db import connection


def test_probe(db):
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE probe (n int)")
        cursor.execute("INSERT INTO probe VALUES (7)")
        cursor.execute("SELECT n, current_setting('server_version_num')::int FROM probe")
        n, version = cursor.fetchone()
    cache.set("probe", "here", 30)
    redis = cache._cache.get_client(None, write=True)
    assert n == 7 and cache.get("probe") == "here"
    database = settings.DATABASES["default"]
    seen = {"host": database["HOST"], "port": int(database["PORT"]), "version": version}
    seen |= {"redis": os.environ["REDIS_URL"], "redis_info": redis.info("server").get("redis_version")}
    with open(os.environ["PROBE_OUT"], "w") as out:
        json.dump(seen, out)
"""


def _unused_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _clone_of_the_checkout(into: Path) -> Path:
    """A clone of this checkout's HEAD (what CI runs: committed files only). It shares this checkout's .venv when
    that is installed for the clone's pyproject.toml (as scripts/test leaves it); otherwise scripts/test makes the
    clone a .venv of its own (a minute or two), since installing the clone into this one would re-point it."""
    subprocess.run(["git", "clone", "-q", "--no-hardlinks", str(ROOT), str(into)], check=True, capture_output=True)
    with (into / "pyproject.toml").open("rb") as pyproject:
        want = subprocess.run(["cksum"], stdin=pyproject, capture_output=True, text=True, check=True).stdout
    stamp = ROOT / ".venv" / ".suanli-installed-test"
    if stamp.is_file() and stamp.read_text().strip() == want.strip():
        (into / ".venv").symlink_to(ROOT / ".venv")
    return into


def _bare_env(tmp: Path) -> dict[str, str]:
    env = dict(os.environ)
    for name in list(env):
        if name.startswith(("PYTEST_", "SUANLI_", "DJANGO_")) or name in ("DATABASE_URL", "REDIS_URL", "VIRTUAL_ENV"):
            env.pop(name)
    env["SUANLI_TEST_SERVERS"] = "own"  # as if this machine ran no PostgreSQL or Redis of its own
    env["PROBE_OUT"] = str(tmp / "probe.json")
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep) if ".venv" not in p)
    return env


def test_scripts_test_runs_the_suite_on_servers_of_its_own_on_a_bare_machine():
    import json

    with tempfile.TemporaryDirectory(prefix="suanli-bare-") as folder:
        tmp = Path(folder)
        clone = _clone_of_the_checkout(tmp / "clone")
        (clone / "tests" / "test_zz_probe.py").write_text(PROBE)
        leftovers_before = set(Path(tempfile.gettempdir()).glob("suanli-test-*"))
        env = _bare_env(tmp)
        result = subprocess.run(
            ["bash", "scripts/test", "-n", "0", "tests/test_zz_probe.py", "tests/test_layout.py"],
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, output[-6000:]
        assert "an embedded PostgreSQL 18 of this run's own" in output, output[-3000:]
        assert "Redis: " in output and "of this run's own at 127.0.0.1:" in output, output[-3000:]
        assert "passed" in result.stdout and "Traceback" not in output, output[-3000:]
        seen = json.loads((tmp / "probe.json").read_text())
        assert seen["host"] == "127.0.0.1" and seen["version"] // 10000 == 18, seen
        assert seen["redis"].startswith("redis://127.0.0.1:") and seen["redis_info"], seen
        redis_port = int(seen["redis"].rsplit(":", 1)[1].split("/")[0])
        assert redis_port != 6379 and seen["port"] != 5432, seen
        # Both stopped when the command ended, their folders removed.
        assert not _answers(seen["port"]) and not _answers(redis_port), seen
        assert set(Path(tempfile.gettempdir()).glob("suanli-test-*")) <= leftovers_before


def test_scripts_test_says_in_one_sentence_what_it_cannot_reach():
    """A DATABASE_URL or REDIS_URL that answers nothing: one line that says what and how to fix it, exit 1."""
    nowhere = _unused_port()
    env = {**os.environ, "DATABASE_URL": f"postgres://postgres@127.0.0.1:{nowhere}/suanli"}
    env.pop("SUANLI_OWN_SERVERS_UP", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "own_servers.py"), "run", "--", "true"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith(f"scripts/test: cannot connect to PostgreSQL at DATABASE_URL (127.0.0.1:{nowhere}/")
    assert "unset it to run on an embedded PostgreSQL" in lines[0]

    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{nowhere}/0"}
    env.pop("SUANLI_OWN_SERVERS_UP", None)
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "own_servers.py"), "run", "--", "true"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"scripts/test: no Redis answers at REDIS_URL (127.0.0.1:{nowhere}): start that server, fix REDIS_URL, "
        "or unset it to have scripts/test start one of its own"
    )


def _lines_until(proc: subprocess.Popen, last: str, *, within: float) -> list[str]:
    """The lines `proc` writes on stderr up to `last` (read from the pipe itself, no buffer between); fails, killing
    its group, when it ends first or stays silent past `within` seconds, instead of hanging the run."""
    import select
    import signal
    import time

    fd, text, deadline = proc.stderr.fileno(), b"", time.monotonic() + within
    while last.encode() not in text.splitlines(keepends=True):
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        chunk = os.read(fd, 65536) if ready else b""
        if not chunk:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail(f"no {last!r} within {within} s or before it ended; it said: {text.decode()!r}")
        text += chunk
    return text.decode().splitlines(keepends=True)


@pytest.mark.parametrize("how", ["ctrl-c", "sigterm"])
def test_the_servers_it_started_stop_when_the_run_is_interrupted(how):
    """Ctrl-C reaches the whole foreground group (the tests and the wrapper); SIGTERM only the wrapper, which passes
    it on. Either way the embedded PostgreSQL and the Redis stop and their folders go."""
    import re
    import signal
    import time

    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SUANLI_OWN_SERVERS_UP")}
    env["SUANLI_TEST_SERVERS"] = "own"
    child = "trap 'echo interrupted; exit 130' INT; trap 'echo interrupted; exit 143' TERM; "
    child += "echo running >&2; sleep 120 & wait"
    before = set(Path(tempfile.gettempdir()).glob("suanli-test-*"))
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "own_servers.py"), "run", "--", "bash", "-c", child],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # a group of its own, as a terminal's foreground job
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # as in a terminal
    )
    said = _lines_until(proc, "running\n", within=120)
    ports = [int(p) for p in re.findall(r"127\.0\.0\.1:(\d+)", "".join(said))]
    assert len(ports) == 2 and all(_answers(port) for port in ports), said
    assert len(set(Path(tempfile.gettempdir()).glob("suanli-test-*")) - before) == 2
    if how == "ctrl-c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == (130 if how == "ctrl-c" else 143)
    assert proc.stdout.read() == "interrupted\n"
    deadline = time.monotonic() + 10
    while any(_answers(port) for port in ports) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_answers(port) for port in ports)
    assert set(Path(tempfile.gettempdir()).glob("suanli-test-*")) <= before
