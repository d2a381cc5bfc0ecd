"""`manage.py purge_expired`: delete expired Idempotency-Key records (beat: accounts.purge_expired)."""

from django.core.management.base import BaseCommand

from accounts.services_maintenance import purge_expired


class Command(BaseCommand):
    help = (
        "Delete Idempotency-Key records past their expiry (the Celery beat job accounts.purge_expired runs the "
        "same). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"purged: {purge_expired()}")
