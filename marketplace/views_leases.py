"""Customer pages for leases: the list, one lease (cards, cost so far, charts, event log), resize, stop, start
and end.

Thin: leases are reached through scheduler.access.access_lease (another organisation's lease is 404 like an
unknown one), changed through scheduler.services once per rendered form (marketplace.forms.IdempotentForm), and
priced so far by billing.metering.lease_usage, the same figure the invoice will carry. Reading needs any
membership; changing needs a role that may operate (owner, admin, member), like the API.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import render
from django.urls import reverse
from django.utils import formats, timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext as _
from django.utils.translation import ngettext, pgettext_lazy
from django.views.decorators.http import require_GET, require_POST

from accounts.error_text import error_text
from accounts.permissions import can_operate, require_operate
from billing.display import PLAN_LABELS, UNIT_LABELS, money
from billing.metering import lease_usage
from marketplace.card_memory import memory_gb
from marketplace.forms import EndForm, IdempotentForm, ResizeForm, describe_errors
from marketplace.polling import poll_login_required
from marketplace.views_scaling import scaling_context
from marketplace.views_volume_moves import lease_move_context
from marketplace.views_workloads import lease_for_page, workload_event_text, workload_panel
from scheduler import services as scheduler_services
from scheduler.models import Lease, LeaseEvent, LeaseState, Plan
from scheduler.selectors import held_allocations, lease_events, leases_for_org
from workloads.volumes import lease_mounts

PAGE_SIZE = 25
LIVE_STATES = (LeaseState.SCHEDULED, LeaseState.ACTIVE)
# States after which the lease's cost no longer changes: its page says "Total cost", not "Cost so far".
FINAL_STATES = (LeaseState.ENDED, LeaseState.PREEMPTED, LeaseState.CANCELLED, LeaseState.FAILED)
# States a customer may still end a lease in: the live ones and a stopped lease (it holds no cards, only its server).
ENDABLE_STATES = (*LIVE_STATES, LeaseState.STOPPED)
# The pages' own words for states and events (the models' labels serve other places with other meanings).
STATE_LABELS = {
    LeaseState.SCHEDULED: pgettext_lazy("lease state", "Reserved"),
    LeaseState.ACTIVE: pgettext_lazy("lease state", "Active"),
    LeaseState.STOPPED: pgettext_lazy("lease state", "Stopped"),
    LeaseState.ENDED: pgettext_lazy("lease state", "Ended"),
    LeaseState.PREEMPTED: pgettext_lazy("lease state", "Preempted"),
    LeaseState.CANCELLED: pgettext_lazy("lease state", "Cancelled"),
    LeaseState.FAILED: pgettext_lazy("lease state", "Failed to start"),
}
# Why a lease ended (Lease.end_reason, set by scheduler.services.lease_end and the jobs that end leases).
END_REASON_LABELS = {
    "customer": pgettext_lazy("lease end", "Ended: you ended it"),
    "expired": pgettext_lazy("lease end", "Ended: it reached its end time"),
    "preempted": pgettext_lazy("lease end", "Ended: preempted for an on-demand lease"),
    "funds_exhausted": pgettext_lazy("lease end", "Ended: funds exhausted"),
    "workload_failed": pgettext_lazy("lease end", "Ended: its workload did not start"),
    # A lease on a resale offer whose backing contract ended (scheduler/resale.py).
    "backing_ended": pgettext_lazy("lease end", "Ended: the contract behind its resale offer ended"),
}
EVENT_LABELS = {
    LeaseEvent.Kind.CREATED: pgettext_lazy("lease event", "Created"),
    LeaseEvent.Kind.STARTED: pgettext_lazy("lease event", "Started"),
    LeaseEvent.Kind.ENDED: pgettext_lazy("lease event", "Ended"),
    LeaseEvent.Kind.CANCELLED: pgettext_lazy("lease event", "Cancelled"),
    LeaseEvent.Kind.RESIZED: pgettext_lazy("lease event", "Resized"),
    LeaseEvent.Kind.PREEMPTION_NOTICE: pgettext_lazy("lease event", "Preemption notice"),
    LeaseEvent.Kind.PREEMPTED: pgettext_lazy("lease event", "Preempted"),
    LeaseEvent.Kind.FAILOVER: pgettext_lazy("lease event", "Card replaced"),
    LeaseEvent.Kind.SHORTFALL: pgettext_lazy("lease event", "Card lost"),
    LeaseEvent.Kind.FAILED: pgettext_lazy("lease event", "Failed to start"),
    LeaseEvent.Kind.WORKLOAD: pgettext_lazy("lease event", "Workload"),
    LeaseEvent.Kind.STOPPED: pgettext_lazy("lease event", "Stopped"),
    LeaseEvent.Kind.RESTARTED: pgettext_lazy("lease event", "Started again"),
}


def is_live(lease: Lease) -> bool:
    return lease.state in LIVE_STATES


def is_endable(lease: Lease) -> bool:
    return lease.state in ENDABLE_STATES


def can_stop(lease: Lease) -> bool:
    """Whether the page offers Stop: an active, firm card_hour lease (scheduler.services.lease_stop decides)."""
    return lease.state == LeaseState.ACTIVE and lease.plan == Plan.CARD_HOUR and not lease.interruptible


# --- cards and events -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CardRow:
    """One card of the lease: where it is, when the lease held it, and (while held) its latest figures.

    `status` says what the card is doing at the page's moment, so an ended lease's cards read as released rather
    than as a reservation: "held" (the lease holds it now), "reserved" (a live lease holds it from a later start),
    "released" (its period is over) or "unused" (a lease that is over never reached the card's start).
    """

    uuid: str
    server_id: int
    region: str
    model: str
    index: int
    since: datetime
    until: datetime | None
    held: bool
    status: str
    utilization_pct: float | None
    memory_used_gb: float | None
    memory_total_gb: float | None


def _figure(sample: dict, name: str) -> float | None:
    value = sample.get(name)
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _card_status(lease: Lease, lower: datetime, upper: datetime | None, *, held: bool, now: datetime) -> str:
    if held:
        return "held"
    if upper is not None and upper <= now:
        return "released"
    return "reserved" if is_live(lease) else "unused"


def card_rows(lease: Lease, *, now: datetime) -> list[CardRow]:
    """The cards held now (or until a set end) for a live lease; for a lease that is over, every card it held."""
    if is_live(lease):
        allocations = held_allocations(lease=lease, at=now)
    else:
        allocations = lease.allocations.select_related("gpu").order_by("server_id", "gpu__index")
    rows = []
    for allocation in allocations.select_related("gpu__server__gpu_model"):
        gpu = allocation.gpu
        held = allocation.period.lower <= now and (allocation.period.upper is None or allocation.period.upper > now)
        status = _card_status(lease, allocation.period.lower, allocation.period.upper, held=held, now=now)
        # Figures only for a card the lease holds now: the card's last sample may be another tenant's otherwise.
        sample = (gpu.last_sample or {}) if held else {}
        used_gb, total_gb = memory_gb(gpu, sample)
        rows.append(
            CardRow(
                uuid=gpu.uuid,
                server_id=allocation.server_id,
                region=gpu.server.region,
                model=gpu.server.gpu_model.name,
                index=gpu.index,
                since=allocation.period.lower,
                until=allocation.period.upper,
                held=held,
                status=status,
                utilization_pct=_figure(sample, "utilization_pct"),
                memory_used_gb=used_gb,
                memory_total_gb=total_gb,
            )
        )
    return rows


def _when(value: str | None) -> str:
    moment = parse_datetime(value) if value else None
    if moment is None:
        return value or ""
    return formats.date_format(timezone.localtime(moment), "DATETIME_FORMAT") + " UTC"


def _cards(uuids: Any) -> str:
    return ", ".join(str(u) for u in uuids) if isinstance(uuids, list) else ""


def event_text(event: LeaseEvent) -> str:
    """One line saying what happened, in the page's language."""
    data = event.data or {}
    kind = event.kind
    if kind == LeaseEvent.Kind.CREATED:
        count = len(data.get("gpus") or [])
        text = ngettext("Created with %(count)s card.", "Created with %(count)s cards.", count) % {"count": count}
        if data.get("state") == LeaseState.SCHEDULED:
            text += " " + _("Reserved from %(start)s.") % {"start": _when(data.get("start_at"))}
        return text
    if kind == LeaseEvent.Kind.STARTED:
        return _("The reservation started.")
    if kind == LeaseEvent.Kind.STOPPED:
        return _("Stopped: the cards were released and are not charged; the volumes stay on server %(server)s.") % {
            "server": data.get("server", "")
        }
    if kind == LeaseEvent.Kind.RESTARTED:
        count = len(data.get("gpus") or [])
        return ngettext(
            "Started again with %(count)s card on server %(server)s.",
            "Started again with %(count)s cards on server %(server)s.",
            count,
        ) % {"count": count, "server": data.get("server", "")}
    if kind == LeaseEvent.Kind.RESIZED:
        return _("Resized from %(before)s to %(after)s cards.") % {
            "before": data.get("from_count"),
            "after": data.get("to_count"),
        }
    if kind in (LeaseEvent.Kind.ENDED, LeaseEvent.Kind.CANCELLED):
        reason = data.get("reason")
        if reason == "customer":
            return _("Ended by you.") if kind == LeaseEvent.Kind.ENDED else _("Cancelled by you before it started.")
        if reason == "end_at":
            return _("Ended at its end time.")
        return _("Ended.")
    if kind == LeaseEvent.Kind.PREEMPTION_NOTICE:
        return _("Preemption notice: an on-demand lease needs the cards; they go at %(at)s.") % {
            "at": _when(data.get("effective_at"))
        }
    if kind == LeaseEvent.Kind.PREEMPTED:
        return _("Preempted.")
    if kind == LeaseEvent.Kind.FAILOVER:
        return _("A card failed and was replaced: %(old)s → %(new)s.") % {
            "old": data.get("from_gpu", ""),
            "new": data.get("to_gpu", ""),
        }
    if kind == LeaseEvent.Kind.SHORTFALL:
        return _("A card failed and no replacement was free: %(gpu)s. It is not charged.") % {
            "gpu": data.get("gpu", "")
        }
    if kind in (LeaseEvent.Kind.FAILED, LeaseEvent.Kind.WORKLOAD):
        return workload_event_text(event)
    return str(EVENT_LABELS.get(event.kind, event.kind))


def event_cards(event: LeaseEvent) -> str:
    """The cards an event names, for the log's last column."""
    data = event.data or {}
    if event.kind == LeaseEvent.Kind.RESIZED:
        parts = []
        if data.get("added"):
            parts.append(_("added: %(cards)s") % {"cards": _cards(data["added"])})
        if data.get("removed"):
            parts.append(_("released: %(cards)s") % {"cards": _cards(data["removed"])})
        return "; ".join(parts)
    return _cards(data.get("gpus"))


# --- pages ------------------------------------------------------------------------------------------------


def _chart_text() -> dict[str, str]:
    """The words telemetry_charts.js shows, in the page's language."""
    return {
        "card": _("Server {server}, GPU {index}"),
        "loading": _("Loading telemetry…"),
        "empty": _("No telemetry in this range yet."),
        "error": _("Could not load the telemetry. It is retried when you pick a range again."),
        "shown": _("Showing {range}, one point per {step} s."),
        # The legend's label for the x axis (uPlot's own default is an English "Time").
        "time": _("Time"),
    }


def _live_context(lease: Lease, now: datetime) -> dict[str, Any]:
    usage = lease_usage(lease=lease, now=now)
    return {
        "lease": lease,
        "live": is_live(lease),
        "final": lease.state in FINAL_STATES,
        "cards": card_rows(lease, now=now),
        "usage": usage,
        "cost": money(usage.amount, usage.currency),
        "now": now,
    }


def _detail(
    request: HttpRequest,
    lease: Lease,
    *,
    resize_form: ResizeForm | None = None,
    end_form: EndForm | None = None,
    stop_form: IdempotentForm | None = None,
    start_form: IdempotentForm | None = None,
    scaling_form: Any = None,
    scaling_remove_form: IdempotentForm | None = None,
    confirming: bool = False,
    status: int = 200,
) -> HttpResponse:
    now = timezone.now()
    operate = can_operate(request)
    live = is_live(lease)
    if resize_form is None and live and lease.plan == Plan.CARD_HOUR:
        resize_form = ResizeForm(current=lease.gpu_count)
    endable = is_endable(lease)
    if end_form is None and endable:
        end_form = EndForm()
    if stop_form is None and can_stop(lease):
        stop_form = IdempotentForm()
    if start_form is None and lease.state == LeaseState.STOPPED:
        start_form = IdempotentForm()
    for form in (resize_form, end_form):
        if form is not None:
            describe_errors(form)
    context = {
        **_live_context(lease, now),
        "org": request.org,
        "plan_label": PLAN_LABELS.get(lease.plan, lease.plan),
        "unit_price": money(lease.unit_price, lease.currency),
        "unit_label": UNIT_LABELS.get(lease.plan, ""),
        "can_operate": operate,
        "resize_form": resize_form if operate and live and lease.plan == Plan.CARD_HOUR else None,
        "end_form": end_form if operate and endable else None,
        "stop_form": stop_form if operate and can_stop(lease) else None,
        "start_form": start_form if operate and lease.state == LeaseState.STOPPED else None,
        # Or move its volumes and start on another server (marketplace/views_volume_moves.py).
        **lease_move_context(lease, can_operate=operate),
        "confirming": confirming,
        "state_label": STATE_LABELS.get(lease.state, lease.state),
        "end_reason_label": (
            END_REASON_LABELS.get(lease.end_reason, "")
            if lease.state in (LeaseState.ENDED, LeaseState.PREEMPTED)
            else ""
        ),
        "panel": workload_panel(request, lease),
        "mounts": lease_mounts(lease),
        "events": [
            {
                "event": event,
                "label": EVENT_LABELS.get(event.kind, event.kind),
                "text": event_text(event),
                "cards": event_cards(event),
            }
            for event in lease_events(lease=lease)
        ],
        "telemetry_url": reverse("lease-telemetry", args=[lease.pk]),
        "chart_text": _chart_text(),
        # Its scaling rule, its status and chart, and the form (marketplace/views_scaling.py).
        **scaling_context(request, lease, form=scaling_form, remove_form=scaling_remove_form),
    }
    return render(request, "marketplace/leases/detail.html", context, status=status)


def render_detail(request: HttpRequest, lease: Lease, *, status: int = 200, **forms: Any) -> HttpResponse:
    """The lease page with some of its forms bound (a refused submission shown with its errors)."""
    return _detail(request, lease, status=status, **forms)


@login_required
@require_GET
def lease_list(request: HttpRequest) -> HttpResponse:
    """The organisation's leases, newest first."""
    org = getattr(request, "org", None)
    page = Paginator(leases_for_org(org=org), PAGE_SIZE).get_page(request.GET.get("page"))
    rows = [
        {
            "lease": lease,
            "state_label": STATE_LABELS.get(lease.state, lease.state),
            "plan_label": PLAN_LABELS.get(lease.plan, lease.plan),
            "unit_price": money(lease.unit_price, lease.currency),
            "unit_label": UNIT_LABELS.get(lease.plan, ""),
        }
        for lease in page.object_list
    ]
    return render(request, "marketplace/leases/list.html", {"org": org, "page": page, "rows": rows})


@login_required
@require_GET
def lease_detail(request: HttpRequest, lease_id: int) -> HttpResponse:
    """One lease: state, cards, cost so far (refreshed by htmx), charts per card, resize and end, the event log."""
    return _detail(request, lease_for_page(request, lease_id))


@require_GET
@poll_login_required("marketplace:lease_detail")
def lease_live(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Cost so far and the cards, for htmx to swap in every 30 seconds."""
    lease = lease_for_page(request, lease_id)
    return render(request, "marketplace/leases/_live.html", _live_context(lease, timezone.now()))


@require_POST
@login_required
def lease_resize(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Grow or shrink a card_hour lease, once per rendered form."""
    lease = lease_for_page(request, lease_id)
    require_operate(request)
    form = ResizeForm(request.POST, current=lease.gpu_count)
    if not form.is_valid():
        form.renew_key()
        return _detail(request, lease, resize_form=form, status=400)
    count = form.cleaned_data["gpu_count"]
    outcome = form.submit(
        org=request.org,
        scope=f"web.lease.{lease.pk}.resize",
        payload={"gpu_count": count},
        work=lambda: {"lease": scheduler_services.lease_resize(lease=lease, gpu_count=count).pk, "gpu_count": count},
    )
    if outcome.ok:
        messages.success(
            request,
            ngettext("The lease now has %(count)s card.", "The lease now has %(count)s cards.", count)
            % {"count": count},
        )
        return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]))
    if outcome.code == "no_capacity":
        form.add_error(
            "gpu_count",
            _("Not enough free cards to grow to %(count)s right now; nothing changed.") % {"count": count},
        )
    elif outcome.code == "invalid" and outcome.fields:
        for problems in outcome.fields.values():
            for problem in problems if isinstance(problems, list) else [problems]:
                form.add_error("gpu_count", error_text(str(problem)))
    elif outcome.code == "invalid_state":
        form.add_error(None, _("This lease is over and can no longer be resized."))
    else:
        form.add_error(None, error_text(outcome.message))
    form.renew_key()
    lease.refresh_from_db()
    return _detail(request, lease, resize_form=form, status=409 if outcome.code != "invalid" else 400)


@require_POST
@login_required
def lease_end(request: HttpRequest, lease_id: int) -> HttpResponse:
    """End the lease now (a reservation not started is cancelled). Once per rendered form; ending a lease that is
    already over changes nothing and says so."""
    lease = lease_for_page(request, lease_id)
    require_operate(request)
    form = EndForm(request.POST)
    if not form.is_valid():
        form.renew_key()
        return _detail(request, lease, end_form=form, status=400)
    if is_endable(lease) and not form.cleaned_data["confirm"]:
        # Asked without the browser's confirm dialog (no JavaScript): ask on the page, with the same key.
        return _detail(request, lease, end_form=form, confirming=True)
    if not is_endable(lease):
        messages.info(request, _("This lease is already over."))
        return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]))
    outcome = form.submit(
        org=request.org,
        scope=f"web.lease.{lease.pk}.end",
        payload={"confirm": True},
        work=lambda: {"lease": scheduler_services.lease_end(lease=lease).pk},
    )
    if outcome.ok:
        messages.success(request, _("Lease %(id)s has ended; its cards are released.") % {"id": lease.pk})
    elif outcome.code == "invalid_state":
        messages.info(request, _("This lease is already over."))
    else:
        messages.error(request, error_text(outcome.message))
    return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]))


@require_POST
@login_required
def lease_stop(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Stop the lease: its cards are released now (and no longer charged), its volumes and server kept. Once per
    rendered form."""
    lease = lease_for_page(request, lease_id)
    require_operate(request)
    form = IdempotentForm(request.POST)
    if not form.is_valid():
        form.renew_key()
        return _detail(request, lease, stop_form=form, status=400)
    outcome = form.submit(
        org=request.org,
        scope=f"web.lease.{lease.pk}.stop",
        payload={},
        work=lambda: {"lease": scheduler_services.lease_stop(lease=lease).pk},
    )
    if outcome.ok:
        messages.success(
            request,
            _("Lease %(id)s is stopped: its cards are released and not charged, its volumes are kept.")
            % {"id": lease.pk},
        )
    elif outcome.code in ("invalid_state", "not_stoppable"):
        messages.info(
            request, _("This lease cannot be stopped now: it must be active and hold its cards on one server.")
        )
    else:
        messages.error(request, error_text(outcome.message))
    return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]))


@require_POST
@login_required
def lease_start(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Start a stopped lease again on the same server (where its volumes are). Once per rendered form; no free
    cards there, or not enough money, changes nothing and says so."""
    lease = lease_for_page(request, lease_id)
    require_operate(request)
    form = IdempotentForm(request.POST)
    if not form.is_valid():
        form.renew_key()
        return _detail(request, lease, start_form=form, status=400)
    outcome = form.submit(
        org=request.org,
        scope=f"web.lease.{lease.pk}.start",
        payload={},
        work=lambda: {"lease": scheduler_services.lease_start(lease=lease).pk},
    )
    if outcome.ok:
        messages.success(request, _("Lease %(id)s is starting again on the same server.") % {"id": lease.pk})
    elif outcome.code == "no_capacity":
        # The service's words, in the page's language: whether cards there are being cleaned, and when to retry.
        messages.error(request, error_text(outcome.message))
    elif outcome.code == "insufficient_funds":
        messages.error(request, _("Your balance cannot cover this lease; top up to start it again."))
    elif outcome.code == "invalid_state":
        messages.info(request, _("This lease is not stopped, so there is nothing to start."))
    else:
        messages.error(request, error_text(outcome.message))
    return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]))
