"""How plans and money read wherever they are shown: the storefront, the customer's and the provider's pages, and
invoices (page and PDF). The one place for a plan's words and for turning an amount into text.

Plans: the model's own choice label (`Plan.label`, "Per card-hour") names a plan in the provider's price table,
forms and the admin; the storefront names it as `PLAN_LABELS` and prices it per `UNIT_LABELS`; an invoice line
describes it as `INVOICE_LINE_LABELS` (stored in English, shown translated) with its unit as `INVOICE_UNIT_LABELS`.

Money, always in the request's locale (Django's formats: digit grouping and separators) with its currency code:
- `money`: a price or an amount on the storefront and lease pages, two places, four where a price needs them;
- `money_text`: invoice figures, trailing zeros dropped but at least cents (per-second rates keep their places);
- `price_text`: a price as the provider entered it (plain digits, at least cents), for their offer list.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal

from django.utils import formats
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, gettext_noop

from scheduler.models import Plan

PLAN_LABELS = {
    Plan.CARD_HOUR: gettext_lazy("By the card-hour"),
    Plan.SERVER_MONTH: gettext_lazy("By the server-month"),
    Plan.PFLOPS_YEAR: gettext_lazy("By the PFLOPS-year"),
}
UNIT_LABELS = {
    Plan.CARD_HOUR: gettext_lazy("per card per hour"),
    Plan.SERVER_MONTH: gettext_lazy("per server per month"),
    Plan.PFLOPS_YEAR: gettext_lazy("per PFLOPS per year"),
}
# An invoice line's description is stored in English ("GPU card-hours, lease 12"); the invoice page and PDF show
# these words in the reader's language, and the line's unit (billing.rating.UNIT_NAMES) as INVOICE_UNIT_LABELS.
INVOICE_LINE_LABELS = {
    Plan.CARD_HOUR: gettext_noop("GPU card-hours"),
    Plan.SERVER_MONTH: gettext_noop("Whole server"),
    Plan.PFLOPS_YEAR: gettext_noop("Contracted PFLOPS"),
}
INVOICE_UNIT_LABELS = {
    "card-hour": gettext_lazy("card-hour"),
    "server-month": gettext_lazy("server-month"),
    "PFLOPS-year": gettext_lazy("PFLOPS-year"),
    "GB-month": gettext_lazy("GB-month"),
    "hour": gettext_lazy("hour"),
}


def money(amount: Decimal | None, currency: str) -> str:
    """`amount` for the page's locale with its currency code: two decimals, four when a price needs them
    (a per-hour price converted into another currency often does)."""
    if amount is None:
        return "—"
    places = 2 if amount == amount.quantize(Decimal("0.01")) else 4
    value = Decimal(amount).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    number = formats.number_format(value, decimal_pos=places, use_l10n=True, force_grouping=True)
    return _("%(currency)s %(amount)s") % {"currency": currency, "amount": number}


def _places(value: Decimal, minimum: int) -> int:
    """Decimal places `value` needs (trailing zeros dropped), at least `minimum`."""
    exponent = value.normalize().as_tuple().exponent
    return max(minimum, -exponent if isinstance(exponent, int) and exponent < 0 else 0)


def number_text(value: Decimal, *, minimum_places: int = 0) -> str:
    """A decimal in the active locale's digits grouping and separator, without trailing zeros."""
    return formats.number_format(value, _places(value, minimum_places), use_l10n=True, force_grouping=True)


def money_text(amount: Decimal, currency: str, *, minimum_places: int = 2) -> str:
    """'USD 12,746.50' in English, 'USD 12746.50' in Chinese (Django's locale formats); a minus sign in front.
    Unit prices keep their extra places (per-second rates); amounts are whole cents already."""
    sign = "-" if amount < 0 else ""
    return f"{sign}{currency}\u00a0{number_text(abs(amount), minimum_places=minimum_places)}"


def price_text(value: Decimal | None) -> str | None:
    """A price as entered: trailing zeros dropped, but at least cents (2.4000 -> 2.40, 0.0125 -> 0.0125)."""
    if value is None:
        return None
    return f"{value:.{_places(value, 2)}f}"
