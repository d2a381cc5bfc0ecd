"""The rent form's side of an offer's page: who may rent, what identifies a replay of a sent form, and what the
page says once the rent succeeded or failed.

marketplace.views_offers.offer_detail renders the page and sends the form; these helpers keep it thin.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.http import HttpRequest, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _

from accounts.error_text import error_text
from accounts.models import Organization
from accounts.permissions import can_operate
from inventory.models import Offer
from marketplace.forms import Outcome, RentForm
from marketplace.forms_workloads import WorkloadForm


def renter_problem(request: HttpRequest) -> str:
    """Why the signed-in caller may not rent (empty when they may)."""
    org: Organization | None = getattr(request, "org", None)
    if org is None:
        return _("Create or join a customer organisation to rent.")
    if not org.is_customer:
        return _("%(name)s is a provider organisation; switch to a customer organisation to rent.") % {"name": org.name}
    if not can_operate(request):
        return _("Your role in %(name)s cannot rent; ask an owner, admin or member.") % {"name": org.name}
    return ""


def rent_payload(offer: Offer, form: RentForm, workload: Any) -> dict[str, Any]:
    """The submitted values (not `now`-dependent ones like a computed end) that identify a replay of this form."""
    return {
        "offer": offer.pk,
        **{name: form.cleaned_data.get(name) for name in form.fields if name != "idempotency_key"},
        "workload": workload,
    }


def rented(request: HttpRequest, lease_id: int, workload: Any) -> HttpResponseRedirect:
    """Say the lease is the caller's and go to its page."""
    if workload:
        text = _("Lease %(id)s is yours. Its workload is starting; how to connect shows below once it runs.")
    else:
        text = _("Lease %(id)s is yours. Its cards are listed below.")
    messages.success(request, text % {"id": lease_id})
    return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease_id]))


def add_rent_errors(form: RentForm, workload_form: WorkloadForm, outcome: Outcome) -> int:
    """Put why the rent failed beside the fields (or atop the form) it concerns; the status to render it with."""
    if outcome.code == "invalid":
        # The workload's field errors beside the workload section's fields, the lease's beside the lease's.
        fields = dict(outcome.fields or {})
        workload_fields = fields.pop("workload", None)
        if isinstance(workload_fields, dict):
            workload_form.add_service_errors(workload_fields, outcome.message)
        if fields or not isinstance(workload_fields, dict):
            form.add_service_errors(fields, outcome.message)
    elif outcome.code == "no_capacity":
        form.add_error(
            None,
            _(
                "Not enough free cards on this server for that right now, so nothing was reserved. "
                "Try fewer cards or a later start."
            ),
        )
    elif outcome.code == "idempotency_key_reused":
        form.add_error(None, _("This form was already sent with other values. Check it and send it again."))
    else:
        form.add_error(None, error_text(outcome.message))
    return {"invalid": 400, "billing_hold": 403}.get(outcome.code, 409)
