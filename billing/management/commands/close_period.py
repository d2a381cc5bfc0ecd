"""`manage.py close_period YYYY-MM`: invoices and provider statements for a month that is over."""

from django.core.management.base import BaseCommand, CommandError

from accounts.errors import DomainError
from billing import invoicing


class Command(BaseCommand):
    help = (
        "Finalise a month that is over (platform time zone): meter it, one invoice per customer organisation and "
        "currency, one statement per provider. Idempotent: running it again makes only what is missing."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("period", help="YYYY-MM")

    def handle(self, *args, period: str, **options) -> None:
        try:
            counts = invoicing.close_period(period)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"{period}: {counts['invoices']} invoices, {counts['statements']} provider statements")
