"""`manage.py wipe_volumes`: volumes whose grace period has run out go to wiping (beat: workloads.wipe_volumes)."""

from django.core.management.base import BaseCommand

from workloads import volumes


class Command(BaseCommand):
    help = (
        "Send volumes in grace whose wipe_at has passed to wiping (their agents destroy the data; one still mounted "
        "by a live lease waits for that lease to end). The Celery beat job workloads.wipe_volumes runs the same. "
        "Idempotent."
    )

    def handle(self, *args, **options) -> None:
        counts = volumes.wipe_volumes()
        self.stdout.write(", ".join(f"{name}: {value}" for name, value in counts.items()))
