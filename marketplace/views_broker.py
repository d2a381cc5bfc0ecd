"""The broker's book page (issue 20): `/broker/?from=YYYY-MM-DD&to=YYYY-MM-DD`.

What the organisation the user acts for holds under its contracts, how much of it renters hold through its resale
offers, its idle cards and its margin per contract, by day (billing.broker.broker_book, the figures of
`GET /api/v1/broker/book/`). Any member reads; only its own organisation's book. The dashboard links it for an
organisation that holds contracts. A bad range is answered 400 with the reason beside the field.
"""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.utils.translation import gettext_lazy
from django.views.decorators.http import require_safe

from accounts.error_text import error_text
from accounts.errors import InvalidInput
from accounts.models import Organization
from billing.broker import Book, Line, broker_book
from billing.display import money_text
from billing.selectors import provider_statements


class BookForm(forms.Form):
    first = forms.DateField(
        label=gettext_lazy("From"), required=False, widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )
    last = forms.DateField(
        label=gettext_lazy("To"), required=False, widget=forms.DateInput(attrs={"type": "date"}, format="%Y-%m-%d")
    )


def _money(line: Line) -> list[dict[str, str]]:
    return [
        {
            "currency": m.currency,
            "revenue": money_text(m.revenue, m.currency),
            "commission": money_text(m.commission, m.currency),
            "net": money_text(m.net, m.currency),
            "cost": money_text(m.cost, m.currency),
            "margin": money_text(m.margin, m.currency),
            "negative": m.margin < 0,
        }
        for m in line.monies()
    ]


def _share(line: Line) -> str:
    share = line.resold_share
    return "–" if share is None else f"{share * 100:.1f}%"


def _hours(seconds) -> str:
    return f"{seconds / 3600:.1f}"


def _context(book: Book) -> dict[str, Any]:
    return {
        "book": book,
        "total": {
            "held_hours": _hours(book.total.held_seconds),
            "resold_hours": _hours(book.total.resold_seconds),
            "idle_hours": _hours(book.total.idle_seconds),
            "share": _share(book.total),
            "money": _money(book.total),
        },
        "contracts": [
            {
                "lease": c.lease,
                "cards": c.cards,
                "held_hours": _hours(c.held_seconds),
                "resold_hours": _hours(c.resold_seconds),
                "share": _share(c),
                "money": _money(c),
            }
            for c in book.contracts
        ],
        "days": [
            {
                "day": d.day,
                "held": d.held_cards,
                "resold": d.resold_cards,
                "idle": d.idle_cards,
                "share": _share(d),
                "money": _money(d),
            }
            for d in book.days
        ],
    }


@login_required
@require_safe
def broker_book_page(request: HttpRequest) -> HttpResponse:
    """The book over the chosen days (default: this month so far)."""
    org: Organization | None = getattr(request, "org", None)
    if org is None:
        raise PermissionDenied
    values = {"from": request.GET.get("from", "")[:40], "to": request.GET.get("to", "")[:40]}
    form = BookForm({"first": values["from"], "last": values["to"]})
    context: dict[str, Any] = {"org": org, "form": form, "book": None, "values": values}
    if form.is_valid():
        try:
            book = broker_book(org=org, first=form.cleaned_data["first"], last=form.cleaned_data["last"])
        except InvalidInput as exc:
            for name, problems in (exc.fields or {"to": [exc.message]}).items():
                form.add_error("first" if name == "from" else "last", [error_text(p) for p in problems])
        else:
            context.update(_context(book))
            context["values"] = {"from": book.first.isoformat(), "to": book.last.isoformat()}
            context["statements"] = list(provider_statements(org=org)[:24])
            context["take_rate_pct"] = book.take_rate * 100
    return render(request, "marketplace/broker/book.html", context, status=400 if form.errors else 200)
