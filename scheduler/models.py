"""Leases, their per-card allocations (a time range each) and the append-only lease event log.

The scheduler sits above inventory and accounts in the layering and imports from them only.
The invariant that matters most is in the database: an allocation holds one card for a half-open
period `[start, end)` (end NULL = open-ended) and an exclusion constraint forbids two allocations of the
same card whose periods overlap, whatever the Python above it does.
"""

from __future__ import annotations

from django.contrib.postgres.constraints import ExclusionConstraint
from django.contrib.postgres.fields import DateTimeRangeField, RangeOperators
from django.db import models
from django.db.models import Case, Q, Value, When
from django.utils.translation import gettext_lazy as _
from django.utils.translation import pgettext_lazy

from accounts.errors import InvalidTransition
from accounts.models import Organization
from accounts.tenancy import TenantQuerySet
from inventory.models import Gpu, GpuModel, Offer, Server


class Plan(models.TextChoices):
    CARD_HOUR = "card_hour", _("Per card-hour")
    SERVER_MONTH = "server_month", _("Per server-month")
    PFLOPS_YEAR = "pflops_year", _("Per PFLOPS-year")


class LeaseState(models.TextChoices):
    SCHEDULED = "scheduled", _("Scheduled")
    ACTIVE = "active", _("Active")
    # A card_hour lease its customer stopped: no cards held (nothing charged for them), its volumes and its server
    # kept; `lease_start` takes cards on that server again (scheduler/services.py).
    STOPPED = "stopped", _("Stopped")
    ENDED = "ended", _("Ended")
    PREEMPTED = "preempted", _("Preempted")
    CANCELLED = "cancelled", _("Cancelled")
    # Its workload never became usable (a failing image, not running within the start timeout): nothing charged.
    FAILED = "failed", _("Failed")


# The only allowed moves of a lease's state; `check_transition` is the one place that reads it, and every
# state write goes through `scheduler.services` with a conditional UPDATE on the allowed source states.
TRANSITIONS: dict[str, frozenset[str]] = {
    LeaseState.SCHEDULED: frozenset({LeaseState.ACTIVE, LeaseState.CANCELLED, LeaseState.PREEMPTED}),
    LeaseState.ACTIVE: frozenset({LeaseState.ENDED, LeaseState.PREEMPTED, LeaseState.FAILED, LeaseState.STOPPED}),
    # A stopped lease holds no cards: it starts again or ends (by its customer, its end time or billing). It has run,
    # so it is never `cancelled` (a reservation that never started), and it cannot be preempted or fail (no cards).
    LeaseState.STOPPED: frozenset({LeaseState.ACTIVE, LeaseState.ENDED}),
    LeaseState.ENDED: frozenset(),
    LeaseState.FAILED: frozenset(),
    LeaseState.PREEMPTED: frozenset(),
    LeaseState.CANCELLED: frozenset(),
}


def sources_of(target: str) -> list[str]:
    """The states a lease may move to `target` from."""
    return [state for state, targets in TRANSITIONS.items() if target in targets]


def check_transition(current: str, target: str) -> None:
    """Raise InvalidTransition unless `current` -> `target` is an allowed move."""
    if target not in TRANSITIONS.get(current, frozenset()):
        raise InvalidTransition(f"A {current} lease cannot become {target}.", code="invalid_state")


class Lease(models.Model):
    """A customer's rental under one of the three plans; holds cards through its allocations."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="leases")
    plan = models.CharField(max_length=16, choices=Plan.choices)
    state = models.CharField(max_length=16, choices=LeaseState.choices, default=LeaseState.SCHEDULED)
    interruptible = models.BooleanField(default=False)
    # Pinned to one offer (its server) when the customer rented from an offer page; else placed by filters.
    offer = models.ForeignKey(Offer, null=True, blank=True, on_delete=models.PROTECT, related_name="leases")
    gpu_model = models.ForeignKey(GpuModel, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    region = models.CharField(max_length=50, blank=True)
    server = models.ForeignKey(Server, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    # card_hour: the cards asked for; other plans: the cards allocated at creation.
    gpu_count = models.PositiveIntegerField(default=0)
    servers = models.PositiveIntegerField(null=True, blank=True)
    pflops = models.DecimalField(max_digits=12, decimal_places=3, null=True, blank=True)
    delivered_pflops = models.DecimalField(max_digits=12, decimal_places=3, default=0)
    # Cards the lease should hold but does not (a failed card with no replacement): billing does not charge them.
    shortfall_gpus = models.PositiveIntegerField(default=0)
    start_at = models.DateTimeField()
    end_at = models.DateTimeField(null=True, blank=True)
    # Prices are fixed when the lease is made, in the organisation's currency (an offer in another currency is
    # converted at SUANLI_FX_RATES then): `price_book` maps each server the lease has used to its price per plan
    # unit; `unit_price` is the quote shown to the customer (the mean over the cards it got first).
    currency = models.CharField(max_length=3, choices=Organization.Currency.choices)
    unit_price = models.DecimalField(max_digits=20, decimal_places=6)
    price_book = models.JSONField(default=dict, blank=True)
    # Where its workload may run (inventory Runtime; blank: anywhere, a lease that only reserves cards), and whether
    # it is host access (server_month on an offer that grants it). Growth and failover keep to the same servers.
    runtime = models.CharField(max_length=16, blank=True)
    host_access = models.BooleanField(default=False)
    # An interruptible lease told to make way: its cards go at this instant (see scheduler/placement.py).
    preempt_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    ended_at = models.DateTimeField(null=True, blank=True)
    # Why it ended: "customer" (they asked; a cancelled reservation too), "expired" (its end came), "preempted",
    # "workload_failed", "funds_exhausted" (its organisation's money ran out; billing/funds.py); blank while it lives.
    end_reason = models.CharField(max_length=32, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(
                condition=Q(plan__in=["card_hour", "server_month", "pflops_year"]), name="lease_plan_valid"
            ),
            models.CheckConstraint(
                condition=Q(state__in=["scheduled", "active", "stopped", "ended", "preempted", "cancelled", "failed"]),
                name="lease_state_valid",
            ),
            models.CheckConstraint(
                condition=Q(end_at__isnull=True) | Q(end_at__gt=models.F("start_at")), name="lease_end_after_start"
            ),
            models.CheckConstraint(
                condition=Q(end_at__isnull=False) | Q(plan="card_hour"), name="lease_end_required_unless_card_hour"
            ),
        ]
        indexes = [
            models.Index(fields=["state", "start_at"], name="lease_state_start"),
            models.Index(fields=["state", "end_at"], name="lease_state_end"),
            models.Index(fields=["organization", "-id"], name="lease_org_recent"),
        ]

    def __str__(self) -> str:
        return f"lease {self.pk} ({self.plan}, {self.state})"


class Allocation(models.Model):
    """One card held by one lease for `period` = [start, end), end NULL while open-ended.

    Never two overlapping periods on one card: the exclusion constraint below is the last word.
    """

    lease = models.ForeignKey(Lease, on_delete=models.PROTECT, related_name="allocations")
    gpu = models.ForeignKey(Gpu, on_delete=models.PROTECT, related_name="allocations")
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="+")
    period = DateTimeRangeField()
    # Why the period was closed early (ended, shrink, failover, preempted); empty while it runs its course.
    close_reason = models.CharField(max_length=32, blank=True)
    # What a second of this card costs: `units` of the plan's unit at `unit_price` (the lease's currency).
    # card_hour: 1 card; server_month: 1/gpu_count of the server; pflops_year: the card's share of the contracted
    # PFLOPS (the shares of a lease's cards sum to its contract, so excess delivered capacity is not charged).
    unit_price = models.DecimalField(max_digits=20, decimal_places=6)
    # 18 places: a share such as 1/3 is off by under 1e-18, so even a 1,000,000-a-month price sums to the cent.
    units = models.DecimalField(max_digits=30, decimal_places=18)
    # A resale lease's allocation (its lease rents a resale offer, `Resale`): the backing lease's allocation of the
    # same card, which it lies inside (card and period; a deferrable trigger checks it, scheduler/resale_sql.py).
    backing = models.ForeignKey("self", null=True, blank=True, on_delete=models.PROTECT, related_name="resold_as")
    # 0: the card's holder (a provider's card rented directly); 1: a resale of a layer-0 allocation. The exclusion
    # constraint is per layer: a resale overlaps its backing allocation, never another resale of the card. Derived
    # from `backing`, so no writer can get it wrong. Capacity counts (capacity_sql.py) read layer 0 only.
    layer = models.GeneratedField(
        expression=Case(When(backing__isnull=False, then=Value(1)), default=Value(0)),
        output_field=models.SmallIntegerField(),
        db_persist=True,
    )

    TENANT_FIELD = "lease__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            ExclusionConstraint(
                name="allocation_no_overlap_per_gpu",
                expressions=[
                    ("gpu", RangeOperators.EQUAL),
                    ("layer", RangeOperators.EQUAL),
                    ("period", RangeOperators.OVERLAPS),
                ],
            ),
            models.CheckConstraint(
                condition=Q(period__isempty=False) & Q(period__startswith__isnull=False),
                name="allocation_period_bounded_start",
            ),
        ]
        indexes = [models.Index(fields=["lease"], name="allocation_lease")]

    def __str__(self) -> str:
        return f"gpu {self.gpu_id} for lease {self.lease_id} {self.period}"


class Resale(models.Model):
    """A resale offer (`offer`, its `organization` the reseller, its `server` the server resold) backed by `lease`,
    the reseller's own active server_month or pflops_year contract: a lease on the offer is placed only on the cards
    `lease` holds on that server and does not resell already (scheduler/resale.py), its allocations pointing at the
    backing ones (`Allocation.backing`). `interruptible_only`: idle committed cards lent back to the market, priced
    interruptible only, which the reseller takes back with the usual preemption notice."""

    offer = models.OneToOneField(Offer, primary_key=True, on_delete=models.PROTECT, related_name="resale")
    lease = models.ForeignKey(Lease, on_delete=models.PROTECT, related_name="resales")
    interruptible_only = models.BooleanField(default=False)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "offer__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["offer"]

    def __str__(self) -> str:
        return f"resale offer {self.offer_id} of lease {self.lease_id}"


class LeaseEvent(models.Model):
    """Append-only history of a lease, readable by its customer and staff. Code only ever inserts rows."""

    class Kind(models.TextChoices):
        CREATED = "created", _("Created")
        STARTED = "started", _("Started")
        ENDED = "ended", _("Ended")
        CANCELLED = "cancelled", _("Cancelled")
        RESIZED = "resized", _("Resized")
        PREEMPTION_NOTICE = "preemption_notice", _("Preemption notice")
        PREEMPTED = "preempted", _("Preempted")
        FAILOVER = "failover", _("Card replaced")
        SHORTFALL = "shortfall", _("Card lost without replacement")
        FAILED = "failed", _("Failed to start")
        WORKLOAD = "workload", _("Workload")
        STOPPED = "stopped", _("Stopped")
        RESTARTED = "restarted", _("Started again")
        # The scaling rule resized it (scheduler/elastic.py): data {from_count, to_count, reason, and the
        # utilisation or queue depth that drove it}.
        SCALED = "scaled", _("Scaled by its rule")

    lease = models.ForeignKey(Lease, on_delete=models.PROTECT, related_name="events")
    at = models.DateTimeField()
    kind = models.CharField(max_length=32, choices=Kind.choices)
    data = models.JSONField(default=dict, blank=True)

    TENANT_FIELD = "lease__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["lease", "id"], name="leaseevent_lease")]

    def __str__(self) -> str:
        return f"{self.kind} at {self.at}"


class Capacity(models.Model):
    """Per server, its free cards as the allocation rows say: kept by database triggers in the same transaction as
    the allocation and card rows they count (scheduler/capacity_sql.py), read by offer search and placement so that
    neither counts the fleet's cards per request. A row answers for instants before `valid_until` (the first start
    or end of an allocation of its cards after `as_of`); readers count live from the allocation rows otherwise.
    Code never writes it."""

    server = models.OneToOneField(
        Server, primary_key=True, on_delete=models.DO_NOTHING, db_constraint=False, related_name="capacity"
    )
    # Cards allocatable as cards: not failed, not drained, not waiting to be reported clean.
    ok_cards = models.IntegerField()
    # Of those, held by no allocation at `as_of` / at `as_of` or any later instant.
    free_now = models.IntegerField()
    free_onward = models.IntegerField()
    as_of = models.DateTimeField()
    valid_until = models.DateTimeField()

    class Meta:
        verbose_name_plural = "capacities"
        indexes = [
            # Best fit for n cards: the first rows with free_onward >= n (scheduler.selectors.best_fit_capacity).
            models.Index(fields=["free_onward", "server"], name="capacity_best_fit"),
            models.Index(fields=["valid_until"], name="capacity_valid_until"),
        ]

    def __str__(self) -> str:
        return f"server {self.server_id}: {self.free_now} of {self.ok_cards} free"


class ScalingRule(models.Model):
    """An elastic card_hour lease's rule (scheduler/elastic.py): between `min_gpus` and `max_gpus` cards, driven by
    either the average GPU utilisation of its cards (`target_utilization_pct`) or a queue depth its customer's job
    reports (`queue_depth_per_gpu`: wanted cards = ceil(depth / it)), moving by `step_up`/`step_down` cards at most
    once per `cooldown_seconds`, capped by `schedule` windows (5-field UTC cron entries, each with its own
    `max_gpus`) and by `max_price_per_hour` (cards x the card-hour price, in the lease's currency). The fields after
    `max_price_per_hour` are its state, written only by the beat job and the queue-depth report."""

    class Status(models.TextChoices):
        OK = "ok", pgettext_lazy("scaling status", "At its target")
        SCALING = "scaling", pgettext_lazy("scaling status", "Scaling")
        WAITING_CAPACITY = "waiting_capacity", pgettext_lazy("scaling status", "Waiting for capacity")
        AT_PRICE_CEILING = "at_price_ceiling", pgettext_lazy("scaling status", "At its price ceiling")
        AT_BOUND = "at_bound", pgettext_lazy("scaling status", "At its bound")
        COOLING_DOWN = "cooling_down", pgettext_lazy("scaling status", "Cooling down")
        SCHEDULED = "scheduled", pgettext_lazy("scaling status", "Held by its schedule")

    lease = models.OneToOneField(Lease, primary_key=True, on_delete=models.CASCADE, related_name="scaling")
    min_gpus = models.PositiveIntegerField(default=0)
    max_gpus = models.PositiveIntegerField()
    target_utilization_pct = models.PositiveSmallIntegerField(null=True, blank=True)
    queue_depth_per_gpu = models.PositiveIntegerField(null=True, blank=True)
    step_up = models.PositiveIntegerField(default=1)
    step_down = models.PositiveIntegerField(default=1)
    cooldown_seconds = models.PositiveIntegerField(default=300)
    schedule = models.JSONField(default=list, blank=True)
    max_price_per_hour = models.DecimalField(max_digits=20, decimal_places=6, null=True, blank=True)
    # State.
    queue_depth = models.PositiveIntegerField(null=True, blank=True)
    queue_depth_at = models.DateTimeField(null=True, blank=True)
    last_scaled_at = models.DateTimeField(null=True, blank=True)
    evaluated_at = models.DateTimeField(null=True, blank=True)
    desired_gpus = models.PositiveIntegerField(null=True, blank=True)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.OK)
    # What the beat job said, as data: [{"code", "params"}], the codes and their sentences in
    # scheduler.elastic.NOTE_SENTENCES (rendered in English for the API, in the reader's language on the page).
    status_notes = models.JSONField(default=list, blank=True)

    TENANT_FIELD = "lease__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(max_gpus__gte=models.F("min_gpus")), name="scaling_min_le_max"),
            models.CheckConstraint(condition=Q(max_gpus__gte=1), name="scaling_max_positive"),
            models.CheckConstraint(
                condition=(Q(target_utilization_pct__isnull=False) & Q(queue_depth_per_gpu__isnull=True))
                | (Q(target_utilization_pct__isnull=True) & Q(queue_depth_per_gpu__isnull=False)),
                name="scaling_one_target",
            ),
            models.CheckConstraint(
                condition=Q(target_utilization_pct__isnull=True)
                | (Q(target_utilization_pct__gte=1) & Q(target_utilization_pct__lte=100)),
                name="scaling_utilization_pct_range",
            ),
            models.CheckConstraint(
                condition=Q(queue_depth_per_gpu__isnull=True) | Q(queue_depth_per_gpu__gte=1),
                name="scaling_queue_depth_per_gpu_positive",
            ),
            models.CheckConstraint(condition=Q(step_up__gte=1) & Q(step_down__gte=1), name="scaling_steps_positive"),
            models.CheckConstraint(
                condition=Q(max_price_per_hour__isnull=True) | Q(max_price_per_hour__gt=0),
                name="scaling_price_ceiling_positive",
            ),
            models.CheckConstraint(
                condition=Q(
                    status__in=[
                        "ok",
                        "scaling",
                        "waiting_capacity",
                        "at_price_ceiling",
                        "at_bound",
                        "cooling_down",
                        "scheduled",
                    ]
                ),
                name="scaling_status_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"scaling of lease {self.lease_id}: {self.min_gpus}..{self.max_gpus}"

    @property
    def status_message(self) -> str:
        """The beat job's notes in English (the API's `status_message`)."""
        from scheduler.elastic import notes_message  # elastic imports this module

        return notes_message(self.status_notes)
