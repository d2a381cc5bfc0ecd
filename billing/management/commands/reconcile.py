"""`manage.py reconcile YYYY-MM`: a closed month's usage, invoices, payments, payouts and balance ledger checked
against each other."""

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from accounts.errors import DomainError
from billing import reconciliation
from billing.reconciliation.report import LEDGER_FIELDS


class Command(BaseCommand):
    help = (
        "Reconcile a closed month: metered usage against invoices and credits, invoices against Stripe payments, "
        "provider statements against usage and payouts, the balance ledger against top-ups, Stripe and settled "
        "invoices. Prints the totals and every mismatch; exits 1 when any."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument("period", help="YYYY-MM")
        parser.add_argument("--csv", dest="csv_path", metavar="FILE", help="Also write the mismatches to FILE as CSV")
        parser.add_argument(
            "--no-stripe-api",
            action="store_true",
            help="Do not call Stripe: match payments against the stored webhook events only",
        )

    def handle(self, *args, period: str, csv_path: str | None, no_stripe_api: bool, **options) -> None:
        try:
            result = reconciliation.reconcile(period, stripe_api=not no_stripe_api)
        except DomainError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Reconciliation of {result.period}")
        for currency, totals in sorted(result.totals.items()):
            self.stdout.write(f"  {currency}")
            for name, value in totals.items():
                if name not in LEDGER_FIELDS:
                    self.stdout.write(f"    {name:<21} {value:>18}")
            self.stdout.write("    balance ledger (the month's entries, signed)")
            for name in LEDGER_FIELDS:
                self.stdout.write(f"      {name.removeprefix('ledger_'):<19} {totals[name]:>18}")
        for row in result.resale:
            self.stdout.write(
                f"  resale of organisation {row['organization']} ({row['currency']}): revenue {row['resale_revenue']}, "
                f"commission {row['commission']}, net {row['resale_net']}, contract cost {row['contract_cost']}, "
                f"margin {row['margin']}"
            )
        counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in {**result.counts, **result.stripe}.items())
        self.stdout.write(f"  {counts}")
        ledger = [m for m in result.mismatches if m.kind in reconciliation.LEDGER_KINDS]
        self.stdout.write(f"  balance ledger: {len(ledger) or 'no'} mismatch{'es' if len(ledger) != 1 else ''}")
        if csv_path:
            Path(csv_path).write_text(reconciliation.mismatches_csv(result), encoding="utf-8")
        if result.ok:
            self.stdout.write(self.style.SUCCESS(f"{result.period}: no mismatch"))
            return
        for m in result.mismatches:
            where = f" [{m.objects_text()}]" if m.objects else ""
            self.stdout.write(f"  {m.kind} {m.currency}: {m.message}{where}")
        # A CommandError exits with status 1 (call_command raises it for tests to catch).
        raise CommandError(f"{result.period}: {len(result.mismatches)} mismatches")
