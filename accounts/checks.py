"""System checks of our own settings (`manage.py check --deploy`)."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import Error, Tags, register


@register(Tags.security, deploy=True)
def check_email_is_delivered(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """With debug off, mail must leave the machine: the console, locmem and file backends keep password-reset and
    verification links where anyone who reads the log or the disk can use them."""
    backend = settings.EMAIL_BACKEND
    if settings.DEBUG or backend not in settings.SUANLI_UNDELIVERED_EMAIL_BACKENDS:
        return []
    return [
        Error(
            f"EMAIL_BACKEND is {backend} with DEBUG off: password-reset and verification links go to the log "
            "(or memory, or files) instead of to their owners.",
            hint="Set EMAIL_BACKEND=django.core.mail.backends.smtp.EmailBackend and EMAIL_HOST (README.md, "
            "Configuration).",
            id="suanli.E001",
        )
    ]
