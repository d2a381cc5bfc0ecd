"""Customer pages for invoices: the organisation's list, one invoice, and the same invoice as a PDF.

Thin: invoices are read through `billing.invoicing.invoices_for(org)`, which holds the caller's organisation's
finalised invoices only, so a draft, another tenant's invoice or an unknown id are the same 404. Any member may
read them (as in the API); the Pay button is for the roles that may pay (accounts.permissions.BILLING) and posts
to the pay API from the page, which stays the one place that starts a payment.

What a user sees of an invoice is built once here (`invoice_view`), in the request's language, and both the page
and the PDF (billing/pdf.py) render that, so the two never disagree.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date, datetime

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.translation import get_language, gettext_lazy
from django.utils.translation import gettext as _
from django.views.decorators.http import require_safe

from accounts.access import Actor
from accounts.errors import NotFound
from accounts.models import Organization
from accounts.permissions import BILLING, has_role
from billing import pdf, rating
from billing.access import access_invoice
from billing.display import INVOICE_LINE_LABELS, INVOICE_UNIT_LABELS, money_text, number_text
from billing.invoicing import invoices_for
from billing.models import Invoice, InvoiceLine

SELLER = "Suanli"

STATE_TEXT = {
    Invoice.State.OPEN: gettext_lazy("Open"),
    Invoice.State.PAID: gettext_lazy("Paid"),
    Invoice.State.VOID: gettext_lazy("Void"),
}
# What Stripe.js appends to the return URL after confirming a payment (redirect_status), said to the customer.
RETURN_TEXT = {
    "succeeded": gettext_lazy(
        "Thank you: your payment went through. The invoice shows Paid as soon as Stripe confirms it to us."
    ),
    "processing": gettext_lazy("Your payment is being processed. The invoice shows Paid once it has gone through."),
    "failed": gettext_lazy("The payment did not go through. You can try again with another payment method."),
}
# The pay endpoint of API.md (fixed by the contract), called by the page's script with the session.
PAY_API_PATH = "/api/v1/invoices/{id}/pay/"


# --- formatting: the request's locale, the invoice's currency -------------------------------------------


def day_text(at: datetime | None) -> str:
    """The calendar day of `at` in the platform time zone (billing periods and due dates are kept there)."""
    if at is None:
        return ""
    return formats.date_format(timezone.localtime(at, rating.platform_zone()), "DATE_FORMAT", use_l10n=True)


def day_iso(at: datetime | None) -> str:
    return timezone.localtime(at, rating.platform_zone()).date().isoformat() if at else ""


def period_text(label: str) -> str:
    """'2026-03' -> 'March 2026' / '2026年3月'."""
    try:
        year, month = (int(part) for part in label.split("-"))
        return formats.date_format(date(year, month, 1), "YEAR_MONTH_FORMAT", use_l10n=True)
    except ValueError:
        return label


# --- what a user sees of an invoice ---------------------------------------------------------------------


@dataclass(frozen=True)
class LineView:
    description: str
    quantity: str
    unit: str
    unit_price: str
    amount: str
    sla_credit: str


@dataclass(frozen=True)
class CreditNoteView:
    number: str
    day: str
    day_iso: str
    reason: str
    amount: str


@dataclass(frozen=True)
class InvoiceView:
    """An invoice as the page and the PDF show it: every figure already formatted for the request's locale."""

    pk: int
    number: str
    seller: str
    buyer: str
    period: str
    period_iso: str
    state: str
    state_label: str
    overdue: bool
    issued: str
    issued_iso: str
    due: str
    due_iso: str
    paid: str
    paid_iso: str
    currency: str
    lines: list[LineView]
    has_sla_credits: bool
    subtotal: str
    credits: str
    has_credits: bool
    tax_label: str
    tax: str
    total: str
    refunded: str
    credit_notes: list[CreditNoteView]


def is_overdue(invoice: Invoice, now: datetime) -> bool:
    """Open past its due date: marked by the hourly job, or already past it before the job has run."""
    return invoice.state == Invoice.State.OPEN and (
        invoice.overdue or (invoice.due_at is not None and invoice.due_at < now)
    )


def _line_view(line: InvoiceLine, currency: str) -> LineView:
    plan = INVOICE_LINE_LABELS.get(line.plan)
    if line.volume_id is not None:
        # A volume's storage: its name and size as they were when the invoice was made ("data (100 GB)").
        description = _("Storage, volume %(volume)s") % {"volume": line.description.removeprefix("Storage, volume ")}
    elif line.data_access_id is not None:
        description = _("Data access without cards, session %(session)s") % {"session": line.data_access_id}
    elif plan:
        description = _("%(plan)s, lease %(lease)s") % {"plan": _(plan), "lease": line.lease_id}
    else:
        description = line.description
    return LineView(
        description=description,
        quantity=number_text(line.quantity),
        unit=str(INVOICE_UNIT_LABELS.get(line.unit, line.unit)),
        unit_price=money_text(line.unit_price, currency),
        amount=money_text(line.amount, currency),
        sla_credit=money_text(-line.sla_credit, currency) if line.sla_credit else "",
    )


def invoice_view(invoice: Invoice, *, now: datetime | None = None) -> InvoiceView:
    """The user's view of `invoice` (its lines and credit notes prefetched or not) in the active language."""
    currency = invoice.currency
    lines = [_line_view(line, currency) for line in invoice.lines.all()]
    rate = number_text(invoice.tax_rate * 100)
    return InvoiceView(
        pk=invoice.pk,
        number=invoice.number,
        seller=SELLER,
        buyer=invoice.organization.name,
        period=period_text(invoice.period),
        period_iso=invoice.period,
        state=invoice.state,
        state_label=str(STATE_TEXT.get(invoice.state, invoice.get_state_display())),
        overdue=is_overdue(invoice, now or timezone.now()),
        issued=day_text(invoice.issued_at),
        issued_iso=day_iso(invoice.issued_at),
        due=day_text(invoice.due_at),
        due_iso=day_iso(invoice.due_at),
        paid=day_text(invoice.paid_at) if invoice.state == Invoice.State.PAID else "",
        paid_iso=day_iso(invoice.paid_at) if invoice.state == Invoice.State.PAID else "",
        currency=currency,
        lines=lines,
        has_sla_credits=any(line.sla_credit for line in lines),
        subtotal=money_text(invoice.subtotal, currency),
        credits=money_text(-invoice.credits, currency),
        has_credits=invoice.credits > 0,
        tax_label=_("Tax (%(rate)s%%)") % {"rate": rate},
        tax=money_text(invoice.tax, currency),
        total=money_text(invoice.total, currency),
        refunded=money_text(invoice.refunded, currency) if invoice.refunded > 0 else "",
        credit_notes=[
            CreditNoteView(
                number=note.number,
                day=day_text(note.created_at),
                day_iso=day_iso(note.created_at),
                reason=note.reason,
                amount=money_text(-note.amount, note.currency),
            )
            for note in invoice.credit_notes.all()
        ],
    )


# --- access ---------------------------------------------------------------------------------------------


def _org(request: HttpRequest) -> Organization | None:
    return getattr(request, "org", None)


def invoice_for_page(request: HttpRequest, invoice_id: int) -> Invoice:
    """The organisation's finalised invoice (billing.access.access_invoice), or a 404 page."""
    try:
        return access_invoice(Actor.of(request), invoice_id)
    except NotFound:
        raise Http404 from None


def can_pay(request: HttpRequest, invoice: Invoice) -> bool:
    return invoice.state == Invoice.State.OPEN and invoice.total > 0 and has_role(request, BILLING)


def _stripe_locale() -> str:
    return "zh" if (get_language() or "").startswith("zh") else "en"


# --- pages ----------------------------------------------------------------------------------------------


@login_required
@require_safe
def invoice_list(request: HttpRequest) -> HttpResponse:
    """The organisation's invoices, newest month first."""
    now = timezone.now()
    rows = [
        {
            "invoice": invoice,
            "period": period_text(invoice.period),
            "state_label": STATE_TEXT.get(invoice.state, invoice.get_state_display()),
            "total": money_text(invoice.total, invoice.currency),
            "due": day_text(invoice.due_at),
            "due_iso": day_iso(invoice.due_at),
            "overdue": is_overdue(invoice, now),
        }
        for invoice in invoices_for(_org(request))
    ]
    return render(request, "billing/invoice_list.html", {"org": _org(request), "rows": rows})


@login_required
@require_safe
def invoice_detail(request: HttpRequest, invoice_id: int) -> HttpResponse:
    """One invoice: seller and buyer, dates, lines, credits, totals, credit notes, and paying it."""
    invoice = invoice_for_page(request, invoice_id)
    returned = request.GET.get("redirect_status", "")
    # Back from Stripe with a payment that went through: the invoice turns paid when Stripe's webhook arrives;
    # until then, no second Pay button.
    payable = can_pay(request, invoice) and returned not in ("succeeded", "processing")
    context = {
        "doc": invoice_view(invoice),
        "can_pay": payable,
        "stripe_publishable_key": settings.STRIPE_PUBLISHABLE_KEY if payable else "",
        "pay_url": PAY_API_PATH.format(id=invoice.pk),
        # One key per page load: a double click, or a retry after a network error, replays the first answer.
        "idempotency_key": f"invoice-page-{uuid.uuid4()}",
        "stripe_locale": _stripe_locale(),
        "return_url": request.build_absolute_uri(reverse("invoices:invoice_detail", args=[invoice.pk])),
        "return_text": RETURN_TEXT.get(returned) if invoice.state == Invoice.State.OPEN else None,
        "pay_text": {
            "busy": _("Contacting the payment provider…"),
            "ready": _("Enter your payment details, then confirm."),
            "confirming": _("Confirming your payment…"),
            "not_configured": _("Online payment is not configured on this site. Please contact us to pay."),
            "failed": _("The payment could not be started. Please try again in a moment."),
        },
    }
    response = render(request, "billing/invoice_detail.html", context)
    if payable:
        # The page carries a fresh Idempotency-Key: a cached copy would share it between visits.
        response["Cache-Control"] = "no-store"
    return response


@login_required
@require_safe
def invoice_pdf(request: HttpRequest, invoice_id: int) -> HttpResponse:
    """The same invoice as an A4 PDF, shown in the browser (and saved under its number)."""
    invoice = invoice_for_page(request, invoice_id)
    response = HttpResponse(pdf.invoice_pdf(invoice_view(invoice)), content_type="application/pdf")
    response["Content-Disposition"] = f'inline; filename="{invoice.number}.pdf"'
    response["Cache-Control"] = "private"
    return response
