"""Storefront pages. Thin: read through selectors or tenant-scoped querysets, render a template."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponsePermanentRedirect, HttpResponseRedirect
from django.shortcuts import render
from django.templatetags.static import static
from django.urls import reverse
from django.views.decorators.http import require_GET

from accounts.access import is_platform_staff
from accounts.models import Membership, Organization
from accounts.selectors import api_keys_for_user, pending_providers
from accounts.tenancy import scoped
from billing.broker import holds_contracts
from inventory.models import Server


@require_GET
def favicon(request: HttpRequest) -> HttpResponse:
    """/favicon.ico, which browsers and crawlers ask for whatever the page says: the site's icon (static
    img/favicon.svg, also named by base.html's <link rel="icon">) instead of a 404 in every log."""
    return HttpResponsePermanentRedirect(static("img/favicon.svg"))


def home(request: HttpRequest) -> HttpResponse:
    return render(request, "marketplace/home.html")


@login_required
def dashboard(request: HttpRequest) -> HttpResponse:
    """The organisation the user acts for; staff who belong to none land on the staff home instead."""
    org: Organization | None = getattr(request, "org", None)
    if org is None and is_platform_staff(request.user):
        return HttpResponseRedirect(reverse("marketplace:staff_home"))
    context = {
        "org": org,
        "membership": getattr(request, "membership", None),
        "members": scoped(Membership, org).select_related("user").order_by("id"),
        "api_keys": api_keys_for_user(user=request.user),
        "servers": (
            scoped(Server, org).select_related("gpu_model").order_by("name")
            if org is not None and org.is_provider
            else None
        ),
        "pending_providers": pending_providers() if is_platform_staff(request.user) else None,
        "holds_contracts": holds_contracts(org),
        "kinds": Organization.Kind.choices,
        "currencies": Organization.Currency.choices,
    }
    return render(request, "marketplace/dashboard.html", context)
