"""`manage.py telemetry_maintain`: raw telemetry partitions made ahead and expired ones dropped."""

from django.core.management.base import BaseCommand

from inventory import telemetry


class Command(BaseCommand):
    help = "Create the raw telemetry partitions ahead and drop those past TELEMETRY_RAW_DAYS (beat runs it hourly)."

    def handle(self, *args, **options):
        done = telemetry.maintain()
        self.stdout.write(f"{len(done['ensured'])} partitions present, dropped: {', '.join(done['dropped']) or 'none'}")
