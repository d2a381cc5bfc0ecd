"""The volumes page's moves (issue 16): "Move" on a volume opens a form (the servers it may go to, each with its
price and room, and a consent box saying what happens), the move's progress bar (bytes the target has copied) in
its row while it runs, and Cancel before the switch. Thin: workloads.volume_moves decides, with the API's words.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse, HttpResponseRedirect
from django.template.defaultfilters import filesizeformat
from django.urls import reverse
from django.utils.translation import gettext as _
from django.views.decorators.http import require_POST

from accounts.access import Actor
from accounts.error_text import error_text
from accounts.errors import DomainError, NotFound
from accounts.permissions import require_operate
from billing.display import money
from inventory.access import STOREFRONT
from inventory.models import Server
from workloads import access, volume_moves
from workloads.models import Volume, VolumeState


def move_row(volume: Volume, move: Any = None) -> dict[str, Any]:
    """What a volume's row shows of moves: its move's progress while one runs, and whether it may move."""
    move = move if move is not None else volume_moves.live_move(volume)
    if move is None:
        return {"move": None, "movable": volume.state == VolumeState.READY}
    progress = volume_moves.progress(move)
    percent = int(100 * progress.bytes_done / progress.bytes_total) if progress.bytes_total else 0
    return {
        "move": {
            "state": progress.state,
            "target": progress.target_server,
            "done": progress.bytes_done,
            "total": progress.bytes_total,
            "done_text": filesizeformat(progress.bytes_done),
            "total_text": filesizeformat(progress.bytes_total),
            "percent": percent,
        },
        "movable": False,
    }


def move_context(request: HttpRequest, *, can_change: bool) -> dict[str, Any]:
    """The move form when the page is asked for it (`?move=<volume id>`): the volume and the servers it may go to."""
    wanted = request.GET.get("move")
    if not wanted or not can_change:
        return {"moving": None}
    try:
        volume = access.access_volume(Actor.for_org(getattr(request, "org", None)), wanted)
    except NotFound:
        return {"moving": None}
    targets = [
        {
            "server": target.server,
            "price": money(target.offer.storage_gb_month_price, target.offer.currency),
            "free_gb": target.free_gb,
        }
        for target in volume_moves.move_targets(volume)
    ]
    return {"moving": {"volume": volume, "targets": targets}}


def _volume(request: HttpRequest, volume_id: int) -> Volume:
    from marketplace.views_volumes import may_change

    try:
        volume = access.access_volume(Actor.for_org(getattr(request, "org", None)), volume_id)
    except NotFound:
        raise Http404 from None
    if not may_change(request):
        raise PermissionDenied
    return volume


@require_POST
@login_required
def volume_move(request: HttpRequest, volume_id: int) -> HttpResponse:
    """Move a volume to the chosen server, with the consent box ticked; a refusal is said on the page."""
    volume = _volume(request, volume_id)
    target = (
        Server.objects.unscoped(STOREFRONT).filter(pk=request.POST.get("server")).first()
        if (request.POST.get("server") or "").isdigit()
        else None
    )
    if target is None:
        messages.error(request, _("Choose the server to move the volume to."))
        return HttpResponseRedirect(reverse("marketplace:volume_list") + f"?move={volume.pk}")
    try:
        volume_moves.move_request(
            volume=volume, target=target, consent=request.POST.get("consent") == "yes", user=request.user
        )
    except DomainError as exc:
        messages.error(request, error_text(exc.message))
        return HttpResponseRedirect(reverse("marketplace:volume_list") + f"?move={volume.pk}")
    messages.success(
        request,
        _(
            "Volume %(name)s is being copied to server %(server)s. It switches there once the copy is whole; then "
            "the copy on server %(old)s is wiped."
        )
        % {"name": volume.name, "server": target.pk, "old": volume.server_id},
    )
    return HttpResponseRedirect(reverse("marketplace:volume_list"))


@require_POST
@login_required
def volume_move_cancel(request: HttpRequest, volume_id: int) -> HttpResponse:
    """Cancel a volume's move before its switch."""
    volume = _volume(request, volume_id)
    try:
        volume_moves.move_cancel(volume=volume)
    except DomainError as exc:
        messages.error(request, error_text(exc.message))
    else:
        messages.success(
            request, _("The move of volume %(name)s is cancelled; it stays where it is.") % {"name": volume.name}
        )
    return HttpResponseRedirect(reverse("marketplace:volume_list"))


# --- the lease page: a stopped lease's "move my volumes and start there" -----------------------------------------


def lease_move_context(lease: Any, *, can_operate: bool) -> dict[str, Any]:
    """For a stopped card-hour lease's page: the servers it could start on now (with its volumes moved there), and
    its volumes' moves while they run."""
    from scheduler.models import LeaseState, Plan
    from workloads import lease_moves

    if lease.state != LeaseState.STOPPED or lease.plan != Plan.CARD_HOUR:
        return {"move_start": None}
    moving = [
        {"volume": move.volume, **move_row(move.volume, move)["move"]}
        for move in volume_moves.VolumeMove.objects.unscoped("the lease's own volumes' moves")
        .filter(lease=lease, state__in=volume_moves.LIVE_MOVE_STATES)
        .select_related("volume")
    ]
    servers = lease_moves.start_alternatives(lease) if can_operate and not moving else []
    return {"move_start": {"servers": servers, "moving": moving, "volumes": lease_moves._lease_volumes(lease)}}


@require_POST
@login_required
def lease_move(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Move a stopped lease's volumes to the chosen server and start it there, with the consent box ticked."""
    from marketplace.views_workloads import lease_for_page
    from workloads import lease_moves

    lease = lease_for_page(request, lease_id)
    require_operate(request)
    page = reverse("marketplace:lease_detail", args=[lease.pk])
    server_id = request.POST.get("server") or ""
    target = Server.objects.unscoped(STOREFRONT).filter(pk=server_id).first() if server_id.isdigit() else None
    if target is None:
        messages.error(request, _("Choose the server to move the volume to."))
        return HttpResponseRedirect(page)
    try:
        moves = lease_moves.lease_move(
            lease=lease, target=target, consent=request.POST.get("consent") == "yes", user=request.user
        )
    except DomainError as exc:
        messages.error(request, error_text(exc.message))
        return HttpResponseRedirect(page)
    if moves:
        messages.success(
            request,
            _("The lease's volumes are being copied to server %(server)s; it starts there once they are.")
            % {"server": target.pk},
        )
    else:
        messages.success(
            request, _("Lease %(id)s is starting on server %(server)s.") % {"id": lease.pk, "server": target.pk}
        )
    return HttpResponseRedirect(page)
