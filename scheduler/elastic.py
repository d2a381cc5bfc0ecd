"""Elastic card_hour leases (issue 20): a lease's scaling rule (scheduler.models.ScalingRule) and the beat job that
follows it, resizing through `scheduler.services.lease_resize` so every invariant of a resize holds (the exclusion
constraint, per-second billing of each card's period, workloads started and stopped on the cards added and removed).

How a rule decides (`decide`, pure; `evaluate` reads the facts it needs):
- The signal. A utilisation rule reads the average `utilization_pct` of the cards the lease holds now, each card's
  samples from the agents' raw telemetry since the latest of: UTILIZATION_WINDOW ago, when the lease got that card,
  and the rule's last change (so a step is judged on what came after it). It adds `step_up` cards when that average
  is above the target by more than UP_BAND points, and takes `step_down` away when it is below by more than
  DOWN_BAND points *and* the same load on fewer cards (average x current / remaining) would stay within UP_BAND of
  the target: the wider band down and the projection are the hysteresis, so a step down is never undone by the next
  step up. A utilisation rule never goes below one card by itself (at 0 there is nothing to measure); from 0 (a
  schedule's window that ended) it comes back to max(min_gpus, 1). No samples in the window: it holds.
  A queue rule wants ceil(depth / queue_depth_per_gpu) cards for the depth last reported through the API, moving
  at most `step_up` / `step_down` cards a time; a depth older than QUEUE_DEPTH_STALE (or none) holds the count.
- The bounds. [min_gpus, max_gpus], lowered by every schedule entry whose 5-field UTC cron expression matches the
  current minute (the smallest `max_gpus` of those), and by `max_price_per_hour`: as many cards as that buys at the
  dearest card-hour price in the lease's price book (new cards usually come at one of those prices; a growth that
  still lands dearer is undone and the rule says `at_price_ceiling`). The price ceiling wins over `min_gpus`.
- The cool-down. A change the signal asks for waits until `cooldown_seconds` after the last change; a change to get
  back inside the bounds (a schedule window starting, the price ceiling, a new rule) is made at once.
- Capacity. Growth that finds no free cards (NoCapacity) changes nothing; the rule says `waiting_capacity` and the
  next run tries again. Growth preempts as a customer's resize does: an on-demand lease may take an interruptible
  lease's cards (with its notice), an interruptible lease never takes anyone's.

What the job says about a rule is data, not prose: `ScalingRule.status_notes` is a list of notes
{"code": ..., "params": {...}}, each code's sentence is in NOTE_SENTENCES (one table, gettext_lazy with named
placeholders), and both readers render from it: `status_message` (the API's field, always English) and the lease page
(marketplace/views_scaling.py, in the request's language). A refusal raised by another service keeps its own words:
the note MESSAGE carries its text, which the page shows through accounts.error_text.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any, TypedDict

from celery.schedules import ParseException, crontab
from django.db import connection, transaction
from django.db.models import Sum
from django.utils import timezone, translation
from django.utils.functional import Promise
from django.utils.translation import gettext_lazy

from accounts.errors import DomainError, InvalidInput, InvalidTransition
from accounts.tenancy import platform_work
from inventory import telemetry
from scheduler import selectors
from scheduler.errors import NoCapacity
from scheduler.models import Allocation, Lease, LeaseState, Plan, ScalingRule
from scheduler.placement import PLATFORM

logger = logging.getLogger(__name__)

UP_BAND = 10
DOWN_BAND = 20
UTILIZATION_WINDOW = timedelta(minutes=5)
QUEUE_DEPTH_STALE = timedelta(minutes=5)
MAX_SCHEDULE_ENTRIES = 20
MAX_GPUS_LIMIT = 1024

Status = ScalingRule.Status


# --- what the job says --------------------------------------------------------------------------------------------


class Note(TypedDict):
    """One thing the beat job says about a rule: a code of NOTE_SENTENCES (or MESSAGE) and its sentence's figures."""

    code: str
    params: dict[str, Any]


# Another service's refusal, in its own words (params {"text": exc.message}); not in NOTE_SENTENCES: the API shows the
# text as it is and the page through accounts.error_text, the catalogue of the services' messages.
MESSAGE = "message"

# Each note's sentence (the English is the API's `status_message`; locale/*/django.po translates it for the page).
NOTE_SENTENCES: dict[str, Promise] = {
    # The signal (_signal).
    "no_cards_to_measure": gettext_lazy("No cards to measure: back to the least that measures."),
    "no_telemetry": gettext_lazy("No utilisation reported for its cards in the window yet."),
    "utilization_above": gettext_lazy("Utilisation %(u)s%% is above the target %(t)s%%."),
    "utilization_below": gettext_lazy("Utilisation %(u)s%% is below the target %(t)s%%."),
    "utilization_near": gettext_lazy("Utilisation %(u)s%% is near the target %(t)s%%."),
    "no_queue_depth": gettext_lazy("No queue depth reported yet."),
    "stale_queue_depth": gettext_lazy("The last queue depth is too old; holding the count."),
    "queue_depth": gettext_lazy("Queue depth %(d)s at %(n)s a card."),
    # The bounds and the cool-down (decide).
    "down_to": gettext_lazy("Down to %(n)s:"),
    "up_to_min": gettext_lazy("Up to its minimum of %(n)s cards."),
    "held_at_min": gettext_lazy("Held at its minimum of %(n)s cards."),
    "schedule_cap": gettext_lazy("Its schedule allows at most %(n)s cards now."),
    "price_ceiling_cap": gettext_lazy("Its price ceiling buys at most %(n)s cards."),
    "at_max": gettext_lazy("At its maximum of %(n)s cards."),
    "cooling_down": gettext_lazy("Cooling down for %(s)s s more."),
    # The resize (scale_lease).
    "waiting_capacity": gettext_lazy("Waiting for %(n)s more free cards."),
    "over_price_ceiling": gettext_lazy("The free cards cost more than its price ceiling allows."),
    "scaled": gettext_lazy("Scaled from %(a)s to %(b)s cards."),
}


def note(code: str, **params: Any) -> Note:
    """A note (its code must be MESSAGE or one of NOTE_SENTENCES'; params are JSON values)."""
    if code != MESSAGE and code not in NOTE_SENTENCES:
        raise ValueError(f"Unknown scaling note {code!r}.")
    return {"code": code, "params": params}


def note_text(item: Note, *, message_text: Callable[[str], str] = str) -> str:
    """One note's sentence in the active language; a MESSAGE's text through `message_text` (as it is by default).
    A code this version does not know (a row written by another) says nothing."""
    code, params = item.get("code"), item.get("params") or {}
    if code == MESSAGE:
        return message_text(str(params.get("text", "")))
    sentence = NOTE_SENTENCES.get(code)
    if sentence is None:
        logger.warning("Unknown scaling note %r", code)
        return ""
    return str(sentence) % params


def notes_text(notes: list[Note], *, message_text: Callable[[str], str] = str) -> str:
    """The notes' sentences in the active language, in order, one space apart."""
    return " ".join(text for text in (note_text(n, message_text=message_text) for n in notes or []) if text)


def notes_message(notes: list[Note]) -> str:
    """The notes in English: the API's `status_message`."""
    with translation.override("en"):
        return notes_text(notes)


# The rule's settings (what PUT replaces), with their defaults; the rest of the row is its state.
SETTINGS: dict[str, Any] = {
    "min_gpus": 0,
    "max_gpus": None,
    "target_utilization_pct": None,
    "queue_depth_per_gpu": None,
    "step_up": 1,
    "step_down": 1,
    "cooldown_seconds": 300,
    "schedule": [],
    "max_price_per_hour": None,
}


# --- cron ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cron:
    """A parsed 5-field cron expression (minute hour day-of-month month day-of-week, UTC; day-of-week 0-6 from
    Sunday, or sun..sat), parsed by Celery's crontab parser (the project's own scheduler library). As in cron, when
    both day fields are restricted a day matching either matches."""

    minutes: frozenset[int]
    hours: frozenset[int]
    days: frozenset[int]
    months: frozenset[int]
    weekdays: frozenset[int]
    any_day: bool
    any_weekday: bool

    @classmethod
    def parse(cls, expression: str) -> Cron:
        parts = expression.split()
        if len(parts) != 5:
            raise ValueError("A cron expression has 5 fields: minute hour day-of-month month day-of-week.")
        minute, hour, day, month, weekday = parts
        if not expression.isascii():  # int() takes other scripts' digits; cron does not
            raise ValueError("A cron expression is written in ASCII.")
        try:
            parsed = crontab(minute=minute, hour=hour, day_of_month="*", month_of_year=month, day_of_week=weekday)
            days = crontab(day_of_month=day).day_of_month
        except (ValueError, TypeError, KeyError, IndexError, ParseException) as exc:  # ParseException: "-1", "1,,2"
            raise ValueError(f"Not a valid cron expression: {exc}") from None
        return cls(
            minutes=frozenset(parsed.minute),
            hours=frozenset(parsed.hour),
            days=frozenset(days),
            months=frozenset(parsed.month_of_year),
            weekdays=frozenset(parsed.day_of_week),
            any_day=day == "*",
            any_weekday=weekday == "*",
        )

    def matches(self, moment: datetime) -> bool:
        """Whether the minute of `moment` (UTC) is one the expression names."""
        moment = moment.astimezone(UTC)
        if moment.minute not in self.minutes or moment.hour not in self.hours or moment.month not in self.months:
            return False
        day_ok = moment.day in self.days
        weekday_ok = (moment.weekday() + 1) % 7 in self.weekdays
        if self.any_day or self.any_weekday:
            return day_ok and weekday_ok
        return day_ok or weekday_ok


def schedule_cap(schedule: list[dict[str, Any]], now: datetime) -> int | None:
    """The smallest `max_gpus` of the schedule entries whose cron expression matches `now`'s minute; None if none."""
    caps = [entry["max_gpus"] for entry in schedule if Cron.parse(entry["cron"]).matches(now)]
    return min(caps) if caps else None


# --- the rule's settings ----------------------------------------------------------------------------------------


def rule_errors(data: dict[str, Any]) -> dict[str, list[str]]:
    """What is wrong with a rule's settings (already of the right types), field by field; empty when valid."""
    errors: dict[str, list[str]] = {}
    low, high = data.get("min_gpus", 0), data.get("max_gpus")
    if high is None:
        errors["max_gpus"] = ["Required."]
    elif high < 1 or high > MAX_GPUS_LIMIT:
        errors["max_gpus"] = [f"Must be between 1 and {MAX_GPUS_LIMIT}."]
    elif low > high:
        errors["min_gpus"] = ["Must not be more than max_gpus."]
    utilization, per_gpu = data.get("target_utilization_pct"), data.get("queue_depth_per_gpu")
    if (utilization is None) == (per_gpu is None):
        message = "Give exactly one of target_utilization_pct and queue_depth_per_gpu."
        errors["target_utilization_pct"] = [message]
        errors["queue_depth_per_gpu"] = [message]
    elif utilization is not None and not 1 <= utilization <= 100:
        errors["target_utilization_pct"] = ["Must be between 1 and 100."]
    elif per_gpu is not None and per_gpu < 1:
        errors["queue_depth_per_gpu"] = ["Must be at least 1."]
    for name in ("step_up", "step_down"):
        if data.get(name, 1) < 1:
            errors[name] = ["Must be at least 1."]
    price = data.get("max_price_per_hour")
    if price is not None and price <= 0:
        errors["max_price_per_hour"] = ["Must be greater than 0."]
    schedule = data.get("schedule") or []
    if len(schedule) > MAX_SCHEDULE_ENTRIES:
        errors["schedule"] = [f"At most {MAX_SCHEDULE_ENTRIES} entries."]
    else:
        problems = []
        for index, entry in enumerate(schedule):
            try:
                Cron.parse(entry["cron"])
            except ValueError as exc:
                problems.append(f"Entry {index}: {exc}")
                continue
            cap = entry["max_gpus"]
            if cap < low or (high is not None and cap > high):
                problems.append(f"Entry {index}: max_gpus must be between min_gpus and max_gpus.")
        if problems:
            errors["schedule"] = problems
    return errors


def rule_settings(data: dict[str, Any], *, within: str | None = None) -> dict[str, Any]:
    """A rule's full settings from `data` (omitted ones take their defaults), or InvalidInput naming each bad field
    (under `within`, the input field that holds them, when given: a lease's `scaling`)."""
    unknown = sorted(set(data) - set(SETTINGS))
    errors: dict[str, list[str]] = {name: ["Unknown field."] for name in unknown}
    settings = {**SETTINGS, **{k: v for k, v in data.items() if k in SETTINGS}}
    errors.update(rule_errors(settings))
    if errors:
        raise InvalidInput("The scaling rule has invalid fields.", fields={within: errors} if within else errors)
    settings["schedule"] = [{"cron": e["cron"], "max_gpus": e["max_gpus"]} for e in settings["schedule"] or []]
    return settings


def _lease_refusal(lease: Lease) -> InvalidInput | InvalidTransition | None:
    if lease.plan != Plan.CARD_HOUR:
        message = "Only card_hour leases can scale."
        return InvalidInput(message, fields={"scaling": [message]})
    if lease.state not in (LeaseState.SCHEDULED, LeaseState.ACTIVE, LeaseState.STOPPED):
        return InvalidTransition(f"This lease is {lease.state} and cannot have a scaling rule.")
    return None


@platform_work(PLATFORM)
def scaling_set(lease: Lease, data: dict[str, Any]) -> ScalingRule:
    """Give `lease` this scaling rule, or replace its settings (omitted ones take their defaults); the rule's state
    (queue depth, last change) is kept. InvalidInput (400, per field) for bad settings or another plan, 409 for a
    lease that has ended. Locks the lease row; the next beat run follows the rule."""
    settings = rule_settings(data)
    with transaction.atomic():
        locked = Lease.objects.select_for_update().get(pk=lease.pk)
        refusal = _lease_refusal(locked)
        if refusal is not None:
            raise refusal
        rule, created = ScalingRule.objects.select_for_update().get_or_create(lease=locked, defaults=settings)
        if not created:
            for name, value in settings.items():
                setattr(rule, name, value)
            rule.status, rule.status_notes = Status.OK, []
            rule.save()
    return rule


@platform_work(PLATFORM)
def rule_of(lease: Lease) -> ScalingRule | None:
    """The lease's scaling rule, or None (the lease was reached through the access layer)."""
    return ScalingRule.objects.filter(lease_id=lease.pk).select_related("lease").first()


@platform_work(PLATFORM)
def scaling_remove(lease: Lease) -> bool:
    """Remove `lease`'s scaling rule (it keeps the cards it holds); False when it had none."""
    with transaction.atomic():
        Lease.objects.select_for_update().get(pk=lease.pk)
        deleted, _ = ScalingRule.objects.filter(lease_id=lease.pk).delete()
    return bool(deleted)


@platform_work(PLATFORM)
def queue_depth_report(lease: Lease, depth: int, now: datetime | None = None) -> ScalingRule:
    """Record the queue depth the customer's job reports for a queue-driven rule (the latest report wins; a
    repeated one only refreshes its time). 409 `no_scaling_rule` without a rule, `not_queue_driven` for a
    utilisation rule; 400 for a negative depth."""
    now = now or timezone.now()
    if depth < 0:
        raise InvalidInput("The queue depth cannot be negative.", fields={"depth": ["Must be 0 or more."]})
    with transaction.atomic():
        rule = ScalingRule.objects.select_for_update().filter(lease_id=lease.pk).first()
        if rule is None:
            raise InvalidTransition("This lease has no scaling rule.", code="no_scaling_rule")
        if (refusal := _lease_refusal(Lease.objects.get(pk=lease.pk))) is not None:
            raise refusal  # an ended lease's rule follows nothing any more: as scaling_set, 409
        if rule.queue_depth_per_gpu is None:
            raise InvalidTransition(
                "This lease's rule follows GPU utilisation, not a queue depth.", code="not_queue_driven"
            )
        rule.queue_depth, rule.queue_depth_at = depth, now
        rule.save(update_fields=["queue_depth", "queue_depth_at"])
    return rule


# --- deciding ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Facts:
    """What a decision reads besides the rule: the cards held now, their average utilisation over the window (None
    without samples), and the dearest card-hour price of the lease's price book (None when it has none)."""

    current: int
    utilization: float | None = None
    card_price: Decimal | None = None


@dataclass(frozen=True)
class Decision:
    current: int
    wanted: int
    # Why, for the event log and the API: utilization_high / utilization_low / queue_depth (the signal),
    # below_min / above_max / schedule / price_ceiling (the bounds), or for no change: on_target, cooling_down,
    # no_telemetry, no_queue_depth, stale_queue_depth, at_bound.
    reason: str
    status: str
    notes: tuple[Note, ...]
    utilization: float | None = None
    queue_depth: int | None = None
    low: int = 0
    high: int = 0

    @property
    def changes(self) -> bool:
        return self.wanted != self.current

    @property
    def message(self) -> str:
        """The notes in English."""
        return notes_message(list(self.notes))

    def data(self) -> dict[str, Any]:
        """The event's data: from, to, why, and the figure that drove it."""
        data: dict[str, Any] = {"from_count": self.current, "to_count": self.wanted, "reason": self.reason}
        if self.utilization is not None:
            data["utilization_pct"] = round(self.utilization, 1)
        if self.queue_depth is not None:
            data["queue_depth"] = self.queue_depth
        return data


def _bounds(rule: ScalingRule, facts: Facts, now: datetime) -> tuple[int, int, str]:
    """The lowest and highest card counts allowed now, and what sets the highest (max_gpus, schedule, price)."""
    high, by = rule.max_gpus, "max_gpus"
    cap = schedule_cap(rule.schedule or [], now)
    if cap is not None and cap < high:
        high, by = cap, "schedule"
    if rule.max_price_per_hour is not None and facts.card_price:
        affordable = int(Decimal(rule.max_price_per_hour) // facts.card_price)
        if affordable < high:
            high, by = affordable, "price_ceiling"
    return min(rule.min_gpus, high), high, by


def _signal(rule: ScalingRule, facts: Facts, now: datetime) -> tuple[int, str, Note]:
    """What the rule's signal asks for, before bounds and cool-down: (cards, reason, note)."""
    current = facts.current
    if rule.target_utilization_pct is not None:
        target = rule.target_utilization_pct
        if current == 0:
            return max(rule.min_gpus, 1), "utilization_high", note("no_cards_to_measure")
        if facts.utilization is None:
            return current, "no_telemetry", note("no_telemetry")
        util = facts.utilization
        figures = {"u": round(util), "t": target}  # round() as f"{util:.0f}" (half to even)
        if util > target + UP_BAND:
            return current + rule.step_up, "utilization_high", note("utilization_above", **figures)
        if util < target - DOWN_BAND:
            step = min(rule.step_down, current - 1)
            if step >= 1 and util * current / (current - step) <= target + UP_BAND:
                return current - step, "utilization_low", note("utilization_below", **figures)
        return current, "on_target", note("utilization_near", **figures)
    if rule.queue_depth is None or rule.queue_depth_at is None:
        return current, "no_queue_depth", note("no_queue_depth")
    if now - rule.queue_depth_at > QUEUE_DEPTH_STALE:
        return current, "stale_queue_depth", note("stale_queue_depth")
    wanted = math.ceil(rule.queue_depth / rule.queue_depth_per_gpu)
    wanted = min(wanted, current + rule.step_up) if wanted > current else max(wanted, current - rule.step_down)
    said = note("queue_depth", d=rule.queue_depth, n=rule.queue_depth_per_gpu)
    return wanted, "queue_depth" if wanted != current else "on_target", said


_BOUND_STATUS = {"max_gpus": Status.AT_BOUND, "schedule": Status.SCHEDULED, "price_ceiling": Status.AT_PRICE_CEILING}


def decide(rule: ScalingRule, facts: Facts, now: datetime) -> Decision:
    """The rule's decision for a lease holding `facts.current` cards now (no database; see the module docstring)."""
    current = facts.current
    low, high, high_by = _bounds(rule, facts, now)
    asked, reason, signal = _signal(rule, facts, now)
    queue = rule.queue_depth if rule.queue_depth_per_gpu is not None else None

    def decision(wanted: int, reason: str, status: str, *notes: Note) -> Decision:
        return Decision(current, wanted, reason, status, notes, facts.utilization, queue, low, high)

    # Outside the bounds: back inside at once, whatever the cool-down.
    if current > high:
        why = {"max_gpus": "above_max", "schedule": "schedule", "price_ceiling": "price_ceiling"}[high_by]
        return decision(high, why, Status.SCALING, note("down_to", n=high), _bound_note(high_by, high))
    if current < low:
        return decision(low, "below_min", Status.SCALING, note("up_to_min", n=low))
    wanted = min(max(asked, low), high)
    if wanted == current:
        if asked > high:
            return decision(current, "at_bound", _BOUND_STATUS[high_by], signal, _bound_note(high_by, high))
        if asked < low:
            return decision(current, "at_bound", Status.AT_BOUND, signal, note("held_at_min", n=low))
        return decision(current, reason, Status.OK, signal)
    cooldown_ends = rule.last_scaled_at + timedelta(seconds=rule.cooldown_seconds) if rule.last_scaled_at else None
    if cooldown_ends is not None and now < cooldown_ends:
        left = math.ceil((cooldown_ends - now).total_seconds())
        return decision(current, "cooling_down", Status.COOLING_DOWN, signal, note("cooling_down", s=left))
    return decision(wanted, reason, Status.SCALING, signal)


def _bound_note(by: str, high: int) -> Note:
    if by == "schedule":
        return note("schedule_cap", n=high)
    if by == "price_ceiling":
        return note("price_ceiling_cap", n=high)
    return note("at_max", n=high)


def lease_utilization(
    lease: Lease, *, since: datetime, now: datetime, allocations: list[Allocation] | None = None
) -> float | None:
    """The average utilisation of the cards `lease` holds now (`allocations`, when the caller has them), each card's
    raw samples from the latest of `since` and when the lease got it up to `now` (an unweighted mean over the cards
    that reported); None without samples."""
    if allocations is None:
        allocations = list(selectors.held_allocations(lease=lease, at=now))
    held = [(a.gpu_id, max(since, a.period.lower)) for a in allocations]
    if not held:
        return None
    query = (
        "SELECT avg(card) FROM (SELECT s.gpu_id, avg(s.utilization_pct) AS card "  # noqa: S608 (our table name)
        f"FROM {telemetry.RAW} s JOIN unnest(%(gpus)s::bigint[], %(froms)s::timestamptz[]) AS w(gpu_id, since) "
        "ON s.gpu_id = w.gpu_id WHERE s.ts >= %(floor)s AND s.ts < %(now)s AND s.ts >= w.since "
        "AND s.utilization_pct IS NOT NULL GROUP BY s.gpu_id) per_card"
    )
    params = {
        "gpus": [gpu for gpu, _ in held],
        "froms": [start for _, start in held],
        "floor": min(start for _, start in held),
        "now": now,
    }
    with connection.cursor() as cursor:
        cursor.execute(query, params)
        value = cursor.fetchone()[0]
    return float(value) if value is not None else None


def card_price(lease: Lease) -> Decimal | None:
    """The dearest card-hour price in the lease's price book (its quote when the book is empty)."""
    prices = [Decimal(price) for price in (lease.price_book or {}).values()]
    price = max(prices) if prices else Decimal(lease.unit_price or 0)
    return price if price > 0 else None


def evaluate(rule: ScalingRule, now: datetime) -> Decision:
    """Read the facts of the rule's lease (cards held, their utilisation, its price) and decide."""
    lease = rule.lease
    held = list(selectors.held_allocations(lease=lease, at=now).select_related(None).only("gpu_id", "period"))
    utilization = None
    if rule.target_utilization_pct is not None and held:
        since = now - UTILIZATION_WINDOW
        if rule.last_scaled_at is not None:
            since = max(since, rule.last_scaled_at)
        utilization = lease_utilization(lease, since=since, now=now, allocations=held)
    facts = Facts(current=len(held), utilization=utilization, card_price=card_price(lease))
    return decide(rule, facts, now)


# --- the beat job ---------------------------------------------------------------------------------------------


class _OverCeiling(Exception):
    """A growth that landed on cards dearer than the price ceiling allows: rolled back."""


def _hourly_cost(lease: Lease, now: datetime) -> Decimal:
    total = selectors.held_allocations(lease=lease, at=now).aggregate(t=Sum("unit_price"))["t"]
    return Decimal(total or 0)


@platform_work(PLATFORM)
def scale_lease(lease_id: int, now: datetime | None = None) -> str:
    """Follow one lease's rule now: lock the lease (skipped when another run holds it), decide, resize, record why
    and the rule's state. Returns what happened: scaled, held, waiting, refused or skipped."""
    from scheduler import services  # the verbs sit beside this module and call into it (lease_resize's 0 cards)

    now = now or timezone.now()
    with transaction.atomic():
        lease = (
            Lease.objects.select_for_update(skip_locked=True)
            .filter(pk=lease_id, state=LeaseState.ACTIVE, plan=Plan.CARD_HOUR)
            .first()
        )
        if lease is None:
            return "skipped"
        rule = ScalingRule.objects.select_for_update().filter(lease=lease).first()
        if rule is None:
            return "skipped"
        rule.lease = lease
        decision = evaluate(rule, now)
        outcome, status, notes = "held", decision.status, list(decision.notes)
        if decision.changes:
            try:
                with transaction.atomic():
                    services.lease_resize(lease=lease, gpu_count=decision.wanted, now=now, scaled=decision.data())
                    if (
                        decision.wanted > decision.current
                        and rule.max_price_per_hour is not None
                        and _hourly_cost(lease, now) > rule.max_price_per_hour
                    ):
                        raise _OverCeiling
            except NoCapacity:
                outcome, status = "waiting", Status.WAITING_CAPACITY
                notes.append(note("waiting_capacity", n=decision.wanted - decision.current))
            except _OverCeiling:
                outcome, status = "refused", Status.AT_PRICE_CEILING
                notes.append(note("over_price_ceiling"))
            except DomainError as exc:
                outcome, status = "refused", Status.AT_BOUND
                notes.append(note(MESSAGE, text=exc.message[:1000]))
            else:
                outcome = "scaled"
                rule.last_scaled_at = now
                notes.insert(0, note("scaled", a=decision.current, b=decision.wanted))
        rule.evaluated_at, rule.desired_gpus = now, decision.wanted
        rule.status, rule.status_notes = status, notes
        rule.save(update_fields=["evaluated_at", "desired_gpus", "status", "status_notes", "last_scaled_at"])
    return outcome


def scale_leases(now: datetime | None = None) -> dict[str, int]:
    """The beat job (every minute; `manage.py scale_leases`): follow the rule of every active card_hour lease that
    has one, each in its own transaction. Idempotent: a second run at the same instant finds each lease at its
    decision (or in its cool-down)."""
    now = now or timezone.now()
    counts = {"scaled": 0, "held": 0, "waiting": 0, "refused": 0, "skipped": 0}
    lease_ids = ScalingRule.objects.filter(lease__state=LeaseState.ACTIVE, lease__plan=Plan.CARD_HOUR).values_list(
        "lease_id", flat=True
    )
    for lease_id in sorted(lease_ids):
        counts[scale_lease(lease_id, now)] += 1
    return counts
