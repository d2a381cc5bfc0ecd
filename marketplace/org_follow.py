"""Following a link into another of the user's organisations: a page of a lease, invoice, server or volume that
answered 404 because it belongs to another organisation the user is a member of switches to that organisation
(with a message saying so) and opens again, instead of a bare 404.

Only the user's own organisations: an object of an organisation they do not belong to, or an id that does not
exist, stays the same 404 (nothing is said about it). Only opening a page (GET and HEAD, not /api/, not an htmx
refresh of a page left open after switching elsewhere): a form never switches. The object's organisation is read
with one query by primary key.
"""

from __future__ import annotations

from collections.abc import Callable

from django.contrib import messages
from django.db import models
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _

from accounts.access import MAX_ID
from accounts.context import SESSION_KEY
from accounts.errors import is_api_path
from accounts.models import Membership
from accounts.tenancy import tenant_field
from billing.models import Invoice
from inventory.models import Server
from scheduler.models import Lease
from workloads.models import Volume

# The URL keyword of each page's object, its model, and the list its organisation's objects are on.
FOLLOWED: dict[str, tuple[type[models.Model], str]] = {
    "lease_id": (Lease, "marketplace:lease_list"),
    "invoice_id": (Invoice, "invoices:invoice_list"),
    "server_id": (Server, "marketplace:server_list"),
    "volume_id": (Volume, "marketplace:volume_list"),
}
WHY = "following a link: the object's organisation, answered only to a member of it"


def organisation_of_object(request: HttpRequest) -> Membership | None:
    """The user's membership in the organisation that owns the object of this 404 page, when it is another of
    theirs than the one they act for; None otherwise."""
    match = request.resolver_match
    user = getattr(request, "user", None)
    if match is None or not getattr(user, "is_authenticated", False):
        return None
    for kwarg, (model, _list) in FOLLOWED.items():
        pk = match.kwargs.get(kwarg)
        if not isinstance(pk, int) or not 0 < pk <= MAX_ID:
            continue
        org_id = (
            model._default_manager.get_queryset()
            .unscoped(WHY)
            .filter(pk=pk)
            .values_list(tenant_field(model), flat=True)
            .first()
        )
        current = getattr(request, "org", None)
        if org_id is None or (current is not None and current.pk == org_id):
            return None
        return Membership.objects.for_user(user).filter(organization_id=org_id).select_related("organization").first()
    return None


class FollowOrganizationMiddleware:
    """A 404 page of another of the user's organisations' objects: act for that organisation and open it again.

    On an object's page, the header's organisation switcher goes on to the list of such objects
    (`request.org_switch_next`): the object belongs to the organisation being left, and opening it again would
    switch straight back."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        if response.status_code != 404 or request.method not in ("GET", "HEAD") or is_api_path(request.path):
            return response
        if request.headers.get("HX-Request"):  # a page's own refresh (htmx) never switches: only opening a link
            return response
        membership = organisation_of_object(request)
        if membership is None:
            return response
        request.session[SESSION_KEY] = membership.organization_id
        messages.info(
            request,
            _("This page belongs to %(name)s, another of your organisations: you now act for %(name)s.")
            % {"name": membership.organization.name},
        )
        return HttpResponseRedirect(request.get_full_path())

    def process_view(self, request: HttpRequest, view: Callable, args: tuple, kwargs: dict) -> None:
        for kwarg, (_model, list_name) in FOLLOWED.items():
            if kwarg in kwargs:
                request.org_switch_next = reverse(list_name)  # type: ignore[attr-defined]
                return
