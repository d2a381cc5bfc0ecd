"""Operate the embedded PostgreSQL (used when DATABASE_URL is unset): start, stop, status, url."""

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from config import embedded


class Command(BaseCommand):
    help = "Start, stop or inspect the embedded PostgreSQL 18 server (data in var/pgdata or $EMBEDDED_PG_DIR)."
    requires_system_checks = []

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["start", "stop", "status", "url"])

    def handle(self, *args, action: str, **options):
        base = settings.BASE_DIR
        pgdata = embedded.data_dir(base)
        if action == "start":
            running = embedded.is_running(base)
            url = embedded.start(base)  # settings do not start it for this command
            self.stdout.write(f"{'already running' if running else 'started'}: {url}")
        elif action == "stop":
            if embedded.stop(base):
                self.stdout.write(f"stopped ({pgdata})")
            else:
                self.stdout.write(f"not running ({pgdata})")
        elif action == "status":
            if embedded.is_running(base):
                self.stdout.write(f"running: {embedded.url(base)} (data {pgdata})")
            else:
                self.stdout.write(f"stopped (data {pgdata})")
                raise SystemExit(3)
        elif action == "url":
            if not embedded.is_running(base):
                raise CommandError(f"not running; start it with `manage.py embedded_db start` (data {pgdata})")
            self.stdout.write(embedded.url(base))
