"""The lease page's elastic part (issue 20): a card_hour lease's scaling rule in words (bounds, target, steps,
cool-down, schedule, price ceiling), its status and the beat job's notes (in the page's language, from the one table
scheduler.elastic.NOTE_SENTENCES; another service's refusal through accounts.error_text), the cards it wants now, the
chart of its cards over time beside their mean utilisation (static/js/scaling_chart.js reads
`GET /api/v1/leases/{id}/scaling/history/`), and the form that sets, changes or removes the rule.

Thin: the rule is read and written through scheduler.elastic (`rule_of`, `scaling_set`, `scaling_remove`), the same
services as `PUT|DELETE /api/v1/leases/{id}/scaling/`, once per rendered form (marketplace.forms.IdempotentForm).
`marketplace/views_leases.py` renders the page and calls `scaling_context`.
"""

from __future__ import annotations

from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from django.utils.translation import gettext as _
from django.utils.translation import gettext_lazy, ngettext
from django.views.decorators.http import require_POST

from accounts.error_text import error_text, place_errors
from accounts.permissions import can_operate, require_operate
from billing.display import money
from marketplace.forms import IdempotentForm, describe_errors
from marketplace.forms_scaling import ScalingForm
from marketplace.views_workloads import lease_for_page
from scheduler import elastic
from scheduler.models import Lease, LeaseState, Plan, ScalingRule

# The states a lease may be given a rule in (scheduler.elastic refuses the others).
RULE_STATES = (LeaseState.SCHEDULED, LeaseState.ACTIVE, LeaseState.STOPPED)

REASON_LABELS = {
    "utilization_high": gettext_lazy("utilisation above the target"),
    "utilization_low": gettext_lazy("utilisation below the target"),
    "queue_depth": gettext_lazy("queue depth"),
    "below_min": gettext_lazy("below its fewest cards"),
    "above_max": gettext_lazy("above its most cards"),
    "schedule": gettext_lazy("its schedule"),
    "price_ceiling": gettext_lazy("its price ceiling"),
}


def status_sentence(rule: ScalingRule, lease: Lease) -> str:
    """What the rule is doing, in words, from its state and the cards the lease holds."""
    held = lease.gpu_count
    wanted = rule.desired_gpus if rule.desired_gpus is not None else held
    values = {"held": held, "wanted": wanted}
    if rule.evaluated_at is None:
        return _("Not checked yet: the rule is followed once a minute.")
    status = rule.status
    if status == ScalingRule.Status.WAITING_CAPACITY:
        text = ngettext(
            "It wants %(wanted)s card and holds %(held)s: waiting for free cards; it tries again every minute.",
            "It wants %(wanted)s cards and holds %(held)s: waiting for free cards; it tries again every minute.",
            wanted,
        )
    elif status == ScalingRule.Status.SCALING:
        text = ngettext("It moved the lease to %(wanted)s card.", "It moved the lease to %(wanted)s cards.", wanted)
    elif status == ScalingRule.Status.COOLING_DOWN:
        text = ngettext(
            "It holds %(held)s card and waits for its cool-down before the next step.",
            "It holds %(held)s cards and waits for its cool-down before the next step.",
            held,
        )
    elif status == ScalingRule.Status.SCHEDULED:
        text = ngettext(
            "Its schedule holds it at %(held)s card now.", "Its schedule holds it at %(held)s cards now.", held
        )
    elif status == ScalingRule.Status.AT_PRICE_CEILING:
        text = ngettext(
            "Its price ceiling holds it at %(held)s card.", "Its price ceiling holds it at %(held)s cards.", held
        )
    elif status == ScalingRule.Status.AT_BOUND:
        text = ngettext(
            "It is at a bound of the rule, with %(held)s card.",
            "It is at a bound of the rule, with %(held)s cards.",
            held,
        )
    else:
        text = ngettext(
            "It holds %(held)s card, as its target asks.", "It holds %(held)s cards, as its target asks.", held
        )
    return text % values


def _rule_view(rule: ScalingRule, lease: Lease) -> dict[str, Any]:
    if rule.target_utilization_pct is not None:
        target = _("Average GPU utilisation of its cards near %(pct)s %%") % {"pct": rule.target_utilization_pct}
    else:
        target = ngettext(
            "%(per)s queued job per card (your job reports the queue depth)",
            "%(per)s queued jobs per card (your job reports the queue depth)",
            rule.queue_depth_per_gpu or 0,
        ) % {"per": rule.queue_depth_per_gpu}
    return {
        "rule": rule,
        "target": target,
        "status_label": ScalingRule.Status(rule.status).label,
        "status_sentence": status_sentence(rule, lease),
        "message": elastic.notes_text(rule.status_notes, message_text=error_text),
        "price_ceiling": (
            money(rule.max_price_per_hour, lease.currency) if rule.max_price_per_hour is not None else None
        ),
        "schedule": rule.schedule or [],
    }


def _chart_text() -> dict[str, str]:
    """The words static/js/scaling_chart.js shows, in the page's language."""
    return {
        "cards": _("Cards held"),
        "utilization": _("Mean utilisation (%)"),
        "loading": _("Loading the chart…"),
        "empty": _("No cards or utilisation in this range yet."),
        "error": _("Could not load the chart. It is retried when you pick a range again."),
        "shown": _("Showing {range}: cards held, and their mean utilisation one point per {step} s."),
        "time": _("Time"),
    }


def scaling_context(
    request: HttpRequest, lease: Lease, *, form: ScalingForm | None = None, remove_form: IdempotentForm | None = None
) -> dict[str, Any]:
    """The lease page's scaling section (empty for plans other than card_hour)."""
    if lease.plan != Plan.CARD_HOUR:
        return {"scaling_shown": False}
    rule = elastic.rule_of(lease)
    editable = can_operate(request) and lease.state in RULE_STATES
    if editable and form is None:
        form = ScalingForm(rule=rule, currency=lease.currency)
    if form is not None:
        describe_errors(form)
    if editable and rule is not None and remove_form is None:
        remove_form = IdempotentForm()
    return {
        "scaling_shown": rule is not None or editable,
        "scaling": _rule_view(rule, lease) if rule is not None else None,
        "scaling_form": form if editable else None,
        "scaling_remove_form": remove_form if editable and rule is not None else None,
        "scaling_history_url": reverse("lease-scaling-history", args=[lease.pk]),
        "scaling_chart_text": _chart_text(),
        "scaling_reason_labels": REASON_LABELS,
    }


def _page(request: HttpRequest, lease: Lease, *, status: int, **forms: Any) -> HttpResponse:
    from marketplace.views_leases import render_detail  # the page itself lives there

    return render_detail(request, lease, status=status, **forms)


@require_POST
@login_required
def lease_scaling_set(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Give the lease a scaling rule or change it, once per rendered form; a refusal is shown beside its field."""
    lease = lease_for_page(request, lease_id)
    require_operate(request)
    rule = elastic.rule_of(lease)
    form = ScalingForm(request.POST, rule=rule, currency=lease.currency)
    if not form.is_valid():
        form.renew_key()
        return _page(request, lease, scaling_form=form, status=400)
    settings = form.settings()
    payload = {**settings, "max_price_per_hour": str(settings["max_price_per_hour"] or "")}
    outcome = form.submit(
        org=request.org,
        scope=f"web.lease.{lease.pk}.scaling",
        payload=payload,
        work=lambda: {"lease": elastic.scaling_set(lease, settings).lease_id},
    )
    if outcome.ok:
        text = _("The scaling rule is saved: %(low)s to %(high)s cards. It is followed from the next minute.")
        messages.success(request, text % {"low": settings["min_gpus"], "high": settings["max_gpus"]})
        return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]) + "#lease-scaling")
    if outcome.code == "invalid_state":
        messages.error(request, _("This lease is over and can no longer have a scaling rule."))
        return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]))
    place_errors(form, outcome.fields, outcome.message)
    form.renew_key()
    return _page(request, lease, scaling_form=form, status=400 if outcome.code == "invalid" else 409)


@require_POST
@login_required
def lease_scaling_remove(request: HttpRequest, lease_id: int) -> HttpResponse:
    """Remove the lease's scaling rule (it keeps the cards it holds), once per rendered form."""
    lease = lease_for_page(request, lease_id)
    require_operate(request)
    form = IdempotentForm(request.POST)
    if not form.is_valid():
        form.renew_key()
        return _page(request, lease, scaling_remove_form=form, status=400)
    outcome = form.submit(
        org=request.org,
        scope=f"web.lease.{lease.pk}.scaling.remove",
        payload={},
        work=lambda: {"removed": elastic.scaling_remove(lease)},
    )
    if outcome.ok and outcome.body.get("removed"):
        messages.success(request, _("The scaling rule is removed; the lease keeps the cards it holds."))
    elif outcome.ok:
        messages.info(request, _("This lease has no scaling rule."))
    else:
        messages.error(request, error_text(outcome.message))
    return HttpResponseRedirect(reverse("marketplace:lease_detail", args=[lease.pk]) + "#lease-scaling")
