"""Access to invoices and provider statements by id; fails closed (accounts/access.py).

An invoice is the customer's once it is finalised: a draft (the period is still being closed) is as unknown as
another tenant's invoice, in the API, the pages and the pay endpoint alike.
"""

from __future__ import annotations

from django.db.models import Prefetch, QuerySet

from accounts.access import Actor, access_one, visible
from billing.models import CreditNote, Invoice, InvoiceLine, Payout, ProviderStatement


def invoices_visible(queryset: QuerySet[Invoice]) -> QuerySet[Invoice]:
    """`queryset` without drafts, newest period first."""
    return queryset.exclude(state=Invoice.State.DRAFT).order_by("-period", "-id")


def with_lines(queryset: QuerySet[Invoice]) -> QuerySet[Invoice]:
    return queryset.prefetch_related(
        Prefetch("lines", InvoiceLine.objects.order_by("id")),
        Prefetch("credit_notes", CreditNote.objects.order_by("id")),
    )


def access_invoice(actor: Actor, invoice_id: object, *, for_update: bool = False) -> Invoice:
    """The actor's organisation's finalised invoice `invoice_id` (any one for a staff read), lines and credit notes
    loaded; NotFound for a draft, another tenant's or an unknown one alike."""
    queryset = invoices_visible(visible(Invoice.objects.select_related("organization"), actor))
    if for_update:
        return access_one(queryset, invoice_id, "invoice", for_update=True)
    return access_one(with_lines(queryset), invoice_id, "invoice")


def statements_with_payouts(queryset: QuerySet[ProviderStatement]) -> QuerySet[ProviderStatement]:
    return queryset.prefetch_related(Prefetch("payouts", Payout.objects.order_by("id"))).order_by("-period", "-id")


def access_statement(actor: Actor, statement_id: object, *, for_update: bool = False) -> ProviderStatement:
    """The actor's organisation's provider statement (any one for staff reading it or paying it); NotFound
    otherwise."""
    queryset = visible(ProviderStatement.objects.all(), actor)
    if for_update:
        return access_one(queryset, statement_id, "statement", for_update=True)
    return access_one(statements_with_payouts(queryset), statement_id, "statement")
