"""`manage.py meter`: usage records for every allocation slot that is over (beat: billing.meter)."""

from django.core.management.base import BaseCommand
from django.utils.dateparse import parse_datetime

from billing.metering import meter


class Command(BaseCommand):
    help = "Write usage records for every allocation hour (or part) that is over; idempotent."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--until", help="ISO time (default now); only slots over by then are metered")

    def handle(self, *args, until: str | None = None, **options) -> None:
        at = None
        if until:
            at = parse_datetime(until)
            if at is None or at.tzinfo is None:
                self.stderr.write("--until must be an ISO 8601 time with an offset, e.g. 2026-05-01T00:00:00+08:00")
                raise SystemExit(2)
        created = meter(until=at)
        self.stdout.write(f"{created} usage records written")
