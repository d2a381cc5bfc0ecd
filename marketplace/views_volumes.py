"""Customer pages for volumes (issue 16): the organisation's volumes with their state, size, price and wipe date, the
form that makes one, and Delete with a confirmation step.

Thin: volumes are read through workloads.volumes.volumes_of and workloads.access.access_volume (another tenant's
volume is 404 like an unknown one) and made or wiped through workloads.volumes' services, so the page refuses what
the API refuses, with the same words. Any member reads; making and deleting need a role that may operate in a
customer organisation, like the API (403 otherwise).
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import formats
from django.utils.translation import gettext as _
from django.utils.translation import pgettext_lazy
from django.views.decorators.http import require_http_methods, require_POST

from accounts.access import Actor
from accounts.error_text import error_text
from accounts.errors import Conflict, DomainError, InvalidInput, NotFound
from accounts.models import Organization
from accounts.permissions import can_operate
from billing.display import money
from marketplace.forms import describe_errors
from marketplace.forms_volumes import VolumeForm
from marketplace.views_data_access import data_access_context
from marketplace.views_volume_moves import move_context, move_row, volume_move, volume_move_cancel
from workloads import access, volumes
from workloads.models import Volume, VolumeState

__all__ = ["volume_delete", "volume_list", "volume_move", "volume_move_cancel"]

STATE_LABELS = {
    VolumeState.CREATING: pgettext_lazy("volume state", "Creating"),
    VolumeState.READY: pgettext_lazy("volume state", "Ready"),
    VolumeState.IN_USE: pgettext_lazy("volume state", "In use"),
    VolumeState.WIPING: pgettext_lazy("volume state", "Wiping"),
    VolumeState.WIPED: pgettext_lazy("volume state", "Wiped"),
}


def state_text(volume: Volume) -> str:
    """The volume's state in words; one in grace says until when it is kept."""
    state = volumes.shown_state(volume)
    if state == VolumeState.GRACE:
        when = formats.date_format(volume.wipe_at, "DATETIME_FORMAT") if volume.wipe_at else "—"
        return _("Kept until %(date)s UTC") % {"date": when}
    return str(STATE_LABELS.get(state, state))


def may_change(request: HttpRequest) -> bool:
    """Whether the caller may make and delete volumes: a customer organisation and a role that may operate."""
    org: Organization | None = getattr(request, "org", None)
    return org is not None and org.is_customer and can_operate(request)


def _row(volume: Volume) -> dict[str, Any]:
    return {
        "volume": volume,
        "state": volumes.shown_state(volume),
        "state_text": state_text(volume),
        "price": money(volume.price_per_gb_month, volume.currency),
        "monthly": money(volume.size_gb * volume.price_per_gb_month, volume.currency),
        "deletable": volume.state not in (VolumeState.WIPING, VolumeState.WIPED),
        **move_row(volume),  # its move's progress, and whether it may move (marketplace/views_volume_moves.py)
    }


def _page(
    request: HttpRequest, *, form: VolumeForm | None = None, confirm: Volume | None = None, status: int = 200
) -> HttpResponse:
    org: Organization | None = getattr(request, "org", None)
    change = may_change(request)
    if form is None and change:
        form = VolumeForm(org=org)
    if form is not None:
        describe_errors(form)
    context = {
        "org": org,
        "rows": [_row(volume) for volume in volumes.volumes_of(org)],
        "form": form if change else None,
        "can_change": change,
        "confirm": _row(confirm) if confirm is not None else None,
        **move_context(request, can_change=change),
        **data_access_context(request, can_change=change),
    }
    return render(request, "marketplace/volumes.html", context, status=status)


@login_required
@require_http_methods(["GET", "HEAD", "POST"])
def volume_list(request: HttpRequest) -> HttpResponse:
    """The organisation's volumes, and (POST) a new one."""
    if request.method != "POST":
        return _page(request)
    if not may_change(request):
        raise PermissionDenied
    org: Organization = request.org
    form = VolumeForm(request.POST, org=org)
    if form.is_valid():
        try:
            volume = volumes.volume_create(
                org=org,
                server=form.chosen_server(),
                name=form.cleaned_data["name"],
                size_gb=form.cleaned_data["size_gb"],
                by=request.user,
            )
        except InvalidInput as exc:
            form.add_service_errors(exc)
        except DomainError as exc:
            # 409 no_storage (too big for what is left), 402 when the balance cannot cover it: above the form.
            form.add_error("size_gb" if exc.code == "no_storage" else None, error_text(exc.message))
            return _page(request, form=form, status=exc.status_code)
        else:
            messages.success(
                request,
                _("Volume %(name)s is being made on server %(server)s; it is ready once the server has made it.")
                % {"name": volume.name, "server": volume.server_id},
            )
            return HttpResponseRedirect(reverse("marketplace:volume_list"))
    return _page(request, form=form, status=400)


@require_POST
@login_required
def volume_delete(request: HttpRequest, volume_id: int) -> HttpResponse:
    """Delete (wipe) a volume: the first POST asks to confirm, the one with `confirm` wipes it. A volume a live
    lease mounts is refused (409, said on the page)."""
    try:
        volume = access.access_volume(Actor.for_org(getattr(request, "org", None)), volume_id)
    except NotFound:
        raise Http404 from None
    if not may_change(request):
        raise PermissionDenied
    if request.POST.get("confirm") != "yes":
        return _page(request, confirm=volume)
    try:
        volumes.volume_delete(volume=volume, by=request.user)
    except Conflict as exc:
        if exc.code != "volume_in_use":
            raise
        messages.error(
            request,
            _("Volume %(name)s is mounted by a live lease's workload; end or stop that lease first, then delete it.")
            % {"name": volume.name},
        )
        return _page(request, status=409)
    messages.success(
        request,
        _("Volume %(name)s is being wiped: its data is destroyed and it is no longer charged once wiped.")
        % {"name": volume.name},
    )
    return HttpResponseRedirect(reverse("marketplace:volume_list"))
