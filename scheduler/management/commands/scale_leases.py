"""`manage.py scale_leases`: follow the scaling rules of elastic leases now (beat: scheduler.scale_leases)."""

from django.core.management.base import BaseCommand

from scheduler import elastic


class Command(BaseCommand):
    help = (
        "Resize every active card_hour lease with a scaling rule to what its rule asks for now (utilisation or "
        "queue depth, bounds, schedule, price ceiling, cool-down); waits when capacity is short. The Celery beat "
        "job scheduler.scale_leases runs the same every minute. Idempotent."
    )

    def handle(self, *args, **options) -> None:
        counts = elastic.scale_leases()
        self.stdout.write(", ".join(f"{name}: {value}" for name, value in counts.items()))
