"""Staff page: the reconciliation of a closed month (billing/reconciliation/), with a CSV of its mismatches; the
balance ledger's movements and mismatches have a section of their own, and so has resale (issue 20).

Only platform staff see it: an anonymous visitor is sent to the login page, anyone else is answered 403 (as the
other staff pages). `?period=YYYY-MM` picks the month (default: the last one), `&format=csv` downloads the CSV.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_safe

from accounts.errors import Conflict, InvalidInput
from accounts.models import Organization
from accounts.permissions import staff_required
from billing import reconciliation
from billing.forms import PeriodForm
from billing.invoicing import previous_period

TOTAL_LABELS = {
    "metered": gettext_lazy("Metered usage"),
    "invoiced_subtotal": gettext_lazy("Invoiced (before credits)"),
    "sla_credits": gettext_lazy("SLA credits"),
    "invoiced": gettext_lazy("Invoiced (after credits)"),
    "tax": gettext_lazy("Tax"),
    "invoiced_total": gettext_lazy("Invoice totals"),
    "paid": gettext_lazy("Paid invoices"),
    "open": gettext_lazy("Open invoices"),
    "void": gettext_lazy("Void invoices"),
    "draft": gettext_lazy("Draft invoices"),
    "payments_received": gettext_lazy("Stripe payments received"),
    "refunded": gettext_lazy("Refunded"),
    "credit_notes": gettext_lazy("Credit notes"),
    "provider_gross": gettext_lazy("Provider gross"),
    "commission": gettext_lazy("Commission"),
    "provider_credits": gettext_lazy("Credits charged back"),
    "provider_net": gettext_lazy("Provider net"),
    "paid_out": gettext_lazy("Paid out"),
    "settled_from_balance": gettext_lazy("Settled from balances"),
}
# The balance ledger's section: the month's entries per kind, signed as in the ledger (reconciliation/ledger.py).
LEDGER_LABELS = {
    "ledger_top_ups": gettext_lazy("Top-ups"),
    "ledger_refunds": gettext_lazy("Top-ups refunded"),
    "ledger_disputes": gettext_lazy("Top-ups disputed"),
    "ledger_disputes_won": gettext_lazy("Disputes won"),
    "ledger_bank_transfers": gettext_lazy("Bank transfers"),
    "ledger_adjustments": gettext_lazy("Adjustments"),
    "ledger_settlements": gettext_lazy("Invoices settled from the balance"),
    "ledger_credit_notes": gettext_lazy("Credit notes returned to the balance"),
    "ledger_net": gettext_lazy("Net movement of balances"),
}

# Resale (issue 20: reconciliation/resale.py): renters' charges for resold cards, the commission on them, the resellers'
# net, and the cost of the contracts behind them.
RESALE_LABELS = {
    "resale_revenue": gettext_lazy("Resale revenue"),
    "resale_commission": gettext_lazy("Commission on resale"),
    "resale_net": gettext_lazy("Resellers' net"),
    "contract_cost": gettext_lazy("Cost of the contracts resold"),
}


def _rows(result: reconciliation.Reconciliation, currencies: list[str], labels: dict) -> list[dict[str, Any]]:
    return [{"label": label, "values": [result.totals[c][key] for c in currencies]} for key, label in labels.items()]


def _resellers(result: reconciliation.Reconciliation) -> list[dict[str, Any]]:
    """The per-reseller resale rows, each reseller named (staff read every organisation), card-seconds in hours."""
    names = dict(
        Organization.objects.unscoped("staff read every reseller's name on the reconciliation page")
        .filter(pk__in=[row["organization"] for row in result.resale])
        .values_list("pk", "name")
    )
    return [
        {
            **row,
            "organization": names.get(row["organization"], row["organization"]),
            "card_hours": (row["resold_card_seconds"] / 3600).quantize(Decimal("0.01")),
        }
        for row in result.resale
    ]


@staff_required
@require_safe
def reconciliation_page(request: HttpRequest) -> HttpResponse:
    """Totals per currency and every mismatch of a month; `format=csv` answers the mismatches as a CSV file."""
    form = PeriodForm(request.GET if "period" in request.GET else {"period": previous_period(timezone.now()).label})
    result = None
    if form.is_valid():
        label = form.cleaned_data["period"]
        try:
            result = reconciliation.reconcile(label)
        except (Conflict, InvalidInput) as exc:
            form.refuse(label, exc)
    if result is not None and request.GET.get("format") == "csv":
        response = HttpResponse(reconciliation.mismatches_csv(result), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = f'attachment; filename="reconciliation-{result.period}.csv"'
        return response
    form.describe_errors()
    context: dict[str, Any] = {"form": form, "result": result, "currencies": [], "rows": [], "ledger_rows": []}
    if result is not None:
        currencies = sorted(result.totals)
        ledger = [m for m in result.mismatches if m.kind in reconciliation.LEDGER_KINDS]
        context.update(
            currencies=currencies,
            rows=_rows(result, currencies, TOTAL_LABELS),
            ledger_rows=_rows(result, currencies, LEDGER_LABELS),
            resale_rows=_rows(result, currencies, RESALE_LABELS),
            resellers=_resellers(result),
            ledger_mismatches=ledger,
            other_mismatches=[m for m in result.mismatches if m.kind not in reconciliation.LEDGER_KINDS],
        )
    return render(request, "billing/reconciliation.html", context, status=400 if form.errors else 200)
