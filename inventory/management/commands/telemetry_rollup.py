"""`manage.py telemetry_rollup`: raw GPU samples into the 1-minute and 1-hour roll-ups."""

from django.core.management.base import BaseCommand

from inventory import telemetry


class Command(BaseCommand):
    help = "Aggregate raw GPU samples into the 1-minute and 1-hour roll-ups (idempotent; beat runs it every minute)."

    def handle(self, *args, **options):
        done = telemetry.rollup()
        self.stdout.write(
            f"{done['minutes']} minute rows, {done['hours']} hour rows, {done['late_minutes']} late minutes recomputed"
        )
