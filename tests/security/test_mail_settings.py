"""With debug off, password-reset and verification mails must leave the machine: `check --deploy` errors on a
console or in-memory backend, and production settings refuse to start with one (issue 13)."""

from __future__ import annotations

import subprocess
import sys

import pytest
from django.core.checks import run_checks

from tests.support.processes import MANAGE, ROOT, production_env

CONSOLE = "django.core.mail.backends.console.EmailBackend"
LOCMEM = "django.core.mail.backends.locmem.EmailBackend"
SMTP = "django.core.mail.backends.smtp.EmailBackend"


def _errors(**kwargs) -> list[str]:
    return [m.id for m in run_checks(include_deployment_checks=True, tags=["security"]) if m.id == "suanli.E001"]


@pytest.mark.parametrize("backend", [CONSOLE, LOCMEM])
def test_check_deploy_errors_on_a_console_or_locmem_backend_with_debug_off(settings, backend):
    settings.DEBUG = False
    settings.EMAIL_BACKEND = backend
    assert _errors() == ["suanli.E001"]


def test_check_deploy_accepts_smtp_and_anything_with_debug_on(settings):
    settings.DEBUG = False
    settings.EMAIL_BACKEND = SMTP
    assert _errors() == []
    settings.DEBUG = True
    settings.EMAIL_BACKEND = CONSOLE
    assert _errors() == []


def _manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, MANAGE, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )


def test_production_settings_refuse_to_start_with_the_console_backend():
    env = production_env(EMAIL_BACKEND=CONSOLE)
    env.pop("SUANLI_ALLOW_CONSOLE_EMAIL", None)
    result = _manage(env, "check")
    assert result.returncode != 0
    assert "EMAIL_BACKEND" in result.stderr and "SUANLI_ALLOW_CONSOLE_EMAIL" in result.stderr


def test_the_opt_out_starts_but_check_deploy_still_says_no():
    env = production_env(EMAIL_BACKEND=CONSOLE, SUANLI_ALLOW_CONSOLE_EMAIL="1")
    assert _manage(env, "check").returncode == 0
    result = _manage(env, "check", "--deploy", "--tag", "security")
    assert result.returncode != 0
    assert "suanli.E001" in result.stdout + result.stderr
