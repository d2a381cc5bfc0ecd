"""`manage.py mark_overdue`: open invoices past their due date become overdue (beat: billing.mark_overdue)."""

from django.core.management.base import BaseCommand

from billing import services


class Command(BaseCommand):
    help = (
        "Mark open invoices past their due date overdue and, with OVERDUE_BLOCKS_LEASES, put their organisations on "
        "billing hold (the Celery beat job billing.mark_overdue runs the same). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"overdue: {services.invoices_mark_overdue()}")
