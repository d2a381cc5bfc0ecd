"""The Celery app as a fresh process sees it: with no REDIS_URL, the server-less broker's folders exist once the app
is configured, and configuring it logs no error."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.processes import ROOT


def test_without_redis_the_filesystem_brokers_folders_are_made_when_the_app_is_configured(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    env.update(SUANLI_VAR_DIR=str(tmp_path), DJANGO_DEBUG="1", DJANGO_SETTINGS_MODULE="config.settings")
    code = "import django; django.setup(); from config.celery import app; print(app.conf.broker_url)"
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "filesystem://"
    assert "Error" not in run.stderr, run.stderr  # configuring used to recurse without end (RecursionError logged)
    assert (tmp_path / "celery-broker").is_dir() and (tmp_path / "celery-control").is_dir()
