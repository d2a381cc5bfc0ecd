"""App config of billing: registers the money check that the scheduler runs when it admits a lease."""

from django.apps import AppConfig


class BillingConfig(AppConfig):
    name = "billing"
    verbose_name = "Billing: usage, invoices, payments and payouts"

    def ready(self) -> None:
        from billing.funds import admit
        from scheduler import admission

        admission.register(admit)
