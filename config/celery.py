"""The Celery app, configured from the Django settings (`CELERY_*`); beat's schedule is in settings."""

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("suanli")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _make_broker_folders(sender: Celery, **_: object) -> None:
    # The server-less filesystem transport needs its folders before the first message. After configuring, not on
    # it: reading `sender.conf` while it is being configured configures it again, without end (RecursionError).
    for folder in (sender.conf.broker_transport_options or {}).values():
        if isinstance(folder, str):
            Path(folder).mkdir(parents=True, exist_ok=True)
