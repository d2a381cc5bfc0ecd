"""The project package: settings, root URLs, the Celery app (loaded here so tasks find it), WSGI/ASGI, the
embedded PostgreSQL and the site-wide commands (`dev`, `embedded_db`)."""

from .celery import app as celery_app

__all__ = ("celery_app",)
