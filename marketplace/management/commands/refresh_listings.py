"""`manage.py refresh_listings` (beat: marketplace.refresh_listings): sync listing rows whose time has passed."""

from django.core.management.base import BaseCommand

from marketplace.listing import listings_refresh


class Command(BaseCommand):
    help = (
        "Sync again the offer listing's rows whose reliability parts the clock has passed (searches count those live "
        "meanwhile; the Celery beat job marketplace.refresh_listings runs the same). Idempotent."
    )

    def handle(self, *args, **options) -> None:
        self.stdout.write(f"servers synced: {listings_refresh()}")
