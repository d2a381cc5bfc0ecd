"""`manage.py check_funds`: low-balance notices, stopping leases of organisations out of money, spend alerts (beat:
billing.check_funds)."""

from django.core.management.base import BaseCommand

from billing import services


class Command(BaseCommand):
    help = (
        "Notify organisations whose money runs out within the notice period, end the card-hour leases of those out "
        "of it once the notice is that old, and e-mail spend alerts (the Celery beat job billing.check_funds runs "
        "the same). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        counts = services.funds_check()
        self.stdout.write(", ".join(f"{name}: {count}" for name, count in counts.items()))
