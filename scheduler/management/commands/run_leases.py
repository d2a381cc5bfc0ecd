"""`manage.py run_leases`: the scheduler's periodic pass over leases (beat: scheduler.run_leases)."""

from django.core.management.base import BaseCommand

from scheduler import lifecycle


class Command(BaseCommand):
    help = (
        "Start due reservations, end leases at end_at, finish preemptions and fail leases over from failed cards "
        "or unreachable servers (the Celery beat job scheduler.run_leases runs the same). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        counts = lifecycle.leases_run()
        self.stdout.write(", ".join(f"{name}: {value}" for name, value in counts.items()))
