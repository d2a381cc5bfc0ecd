"""`manage.py check_workloads`: start and clean timeouts of workloads (beat: workloads.check_workloads)."""

from django.core.management.base import BaseCommand

from workloads import checks


class Command(BaseCommand):
    help = (
        "Fail card-hour leases whose workload was not running within the start timeout (nothing charged) and drain "
        "cards that their agent has not reported clean within the clean timeout (the Celery beat job "
        "workloads.check_workloads runs the same). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        counts = checks.workloads_check()
        self.stdout.write(", ".join(f"{name}: {value}" for name, value in counts.items()))
