"""Elastic card_hour leases (issue 20, scheduler/elastic.py): the rule's decisions (bounds, cool-down, hysteresis,
schedule windows, price ceiling, queue depth and its staleness), and the beat job on the database: real telemetry
reports drive a lease 2 -> 8 -> 2 cards, short capacity waits and then scales, a higher-priority lease's cards are
never taken, a schedule takes a lease to 0 and back, and every step is a resize (exclusion constraint, billing of
each card's period by the second)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal

import pytest
import time_machine
from django.core.management import call_command
from django.db import IntegrityError, connection, transaction

from accounts.errors import InvalidInput, InvalidTransition
from billing.metering import meter
from billing.models import UsageRecord
from inventory import ingest, telemetry
from inventory.models import Gpu, Server
from scheduler import elastic, services
from scheduler.elastic import Cron, Decision, Facts, decide, schedule_cap
from scheduler.models import Allocation, Lease, LeaseEvent, LeaseState, ScalingRule
from scheduler.tasks import scale_leases_task
from tests.factories import online_server

D = Decimal
# A Monday, 10:00 UTC.
T0 = datetime(2026, 12, 7, 10, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
HOUR = timedelta(hours=1)


def rule(**fields) -> ScalingRule:
    """An unsaved rule (decisions need no database)."""
    fields.setdefault("min_gpus", 1)
    fields.setdefault("max_gpus", 8)
    if "queue_depth_per_gpu" not in fields:
        fields.setdefault("target_utilization_pct", 70)
    fields.setdefault("cooldown_seconds", 300)
    fields.setdefault("schedule", [])
    return ScalingRule(**fields)


# --- cron ----------------------------------------------------------------------------------------------------


def test_cron_matches_the_minutes_it_names_in_utc():
    working = Cron.parse("* 9-17 * * mon-fri")
    assert working.matches(T0)  # Monday 10:00
    assert working.matches(datetime(2026, 12, 7, 17, 59, tzinfo=UTC))
    assert not working.matches(datetime(2026, 12, 7, 18, 0, tzinfo=UTC))
    assert not working.matches(datetime(2026, 12, 12, 10, 0, tzinfo=UTC))  # Saturday
    # Another zone's clock is read in UTC.
    assert working.matches(T0.astimezone(timezone(timedelta(hours=8))))
    assert Cron.parse("*/15 * * * *").matches(T0 + 15 * MINUTE)
    assert not Cron.parse("*/15 * * * *").matches(T0 + 14 * MINUTE)
    assert Cron.parse("* * * * 0").matches(datetime(2026, 12, 13, 3, 0, tzinfo=UTC))  # Sunday is 0


def test_cron_day_fields_match_either_when_both_are_restricted():
    first_or_monday = Cron.parse("* * 1 * 1")
    assert first_or_monday.matches(T0)  # a Monday, the 7th
    assert first_or_monday.matches(datetime(2026, 12, 1, 10, 0, tzinfo=UTC))  # a Tuesday, the 1st
    assert not first_or_monday.matches(datetime(2026, 12, 8, 10, 0, tzinfo=UTC))


@pytest.mark.parametrize(
    "expression",
    [
        "",
        "* * * *",
        "* * * * * *",
        "61 * * * *",
        "* 25 * * *",
        "x * * * *",
        "-1 * * * *",
        "1,,2 * * * *",
        "\u0661 * * * *",
    ],
)
def test_bad_cron_expressions_are_refused(expression):
    with pytest.raises(ValueError):
        Cron.parse(expression)


def test_the_smallest_cap_of_the_matching_schedule_entries_applies():
    schedule = [{"cron": "* 0-8,18-23 * * *", "max_gpus": 0}, {"cron": "* * * * sat,sun", "max_gpus": 2}]
    assert schedule_cap(schedule, T0) is None
    assert schedule_cap(schedule, T0.replace(hour=7)) == 0
    assert schedule_cap(schedule, datetime(2026, 12, 12, 10, 0, tzinfo=UTC)) == 2
    assert schedule_cap(schedule, datetime(2026, 12, 12, 20, 0, tzinfo=UTC)) == 0


# --- decisions -----------------------------------------------------------------------------------------------


def test_utilisation_above_the_band_adds_step_up_cards():
    decision = decide(rule(step_up=2), Facts(current=2, utilization=81.0), T0)
    assert (decision.current, decision.wanted, decision.reason) == (2, 4, "utilization_high")
    assert decision.status == "scaling" and decision.changes
    assert decision.data() == {"from_count": 2, "to_count": 4, "reason": "utilization_high", "utilization_pct": 81.0}


def test_utilisation_within_the_bands_holds():
    for utilization in (51.0, 70.0, 80.0):
        decision = decide(rule(), Facts(current=4, utilization=utilization), T0)
        assert not decision.changes and decision.reason == "on_target" and decision.status == "ok"


def test_utilisation_below_the_band_removes_step_down_cards_unless_fewer_would_be_too_busy():
    assert decide(rule(step_down=2), Facts(current=8, utilization=30.0), T0).wanted == 6
    # 45% on 2 cards is 90% on 1: above the upper band, so the step down would be undone next time: hold.
    held = decide(rule(), Facts(current=2, utilization=45.0), T0)
    assert not held.changes and held.reason == "on_target"
    # A step down larger than the cards left above 1 is cut to them (a utilisation rule keeps a card to measure).
    assert decide(rule(min_gpus=0, step_down=5), Facts(current=3, utilization=5.0), T0).wanted == 1


def test_no_telemetry_holds():
    decision = decide(rule(), Facts(current=3, utilization=None), T0)
    assert not decision.changes and decision.reason == "no_telemetry"


def test_bounds_are_never_crossed():
    at_max = decide(rule(max_gpus=4), Facts(current=4, utilization=99.0), T0)
    assert not at_max.changes and at_max.status == "at_bound"
    capped = decide(rule(max_gpus=5, step_up=4), Facts(current=4, utilization=99.0), T0)
    assert capped.wanted == 5
    at_min = decide(rule(min_gpus=3), Facts(current=3, utilization=1.0), T0)
    assert not at_min.changes and at_min.status == "at_bound"
    # Outside the bounds (the rule changed): back inside at once, cool-down or not.
    fresh = {"last_scaled_at": T0 - MINUTE}
    assert decide(rule(max_gpus=4, **fresh), Facts(current=7, utilization=99.0), T0).wanted == 4
    below = decide(rule(min_gpus=3, **fresh), Facts(current=1, utilization=50.0), T0)
    assert (below.wanted, below.reason) == (3, "below_min")


def test_the_cool_down_holds_a_change_the_signal_asks_for():
    recent = rule(last_scaled_at=T0 - 4 * MINUTE, cooldown_seconds=300)
    decision = decide(recent, Facts(current=2, utilization=95.0), T0)
    assert not decision.changes and decision.status == "cooling_down" and "60 s" in decision.message
    assert decide(recent, Facts(current=2, utilization=95.0), T0 + MINUTE).wanted == 3


def test_a_schedule_window_caps_the_count_at_once():
    nights = rule(min_gpus=0, schedule=[{"cron": "* 0-8 * * *", "max_gpus": 0}], last_scaled_at=T0 - 2 * HOUR)
    night = T0.replace(hour=8, minute=30)
    down = decide(nights, Facts(current=5, utilization=99.0), night)
    assert (down.wanted, down.reason, down.status) == (0, "schedule", "scaling")
    asleep = decide(nights, Facts(current=0), night)
    assert not asleep.changes and asleep.status == "scheduled"
    # 09:00: the window is over; with no card to measure the rule comes back to one.
    assert decide(nights, Facts(current=0), T0.replace(hour=9)).wanted == 1
    assert decide(rule(min_gpus=2, max_gpus=8), Facts(current=0), T0).wanted == 2


def test_the_price_ceiling_caps_the_count():
    ceiling = rule(max_price_per_hour=D("10.00"))
    capped = decide(ceiling, Facts(current=4, utilization=99.0, card_price=D("2.50")), T0)
    assert not capped.changes and capped.status == "at_price_ceiling" and capped.high == 4
    over = decide(ceiling, Facts(current=6, utilization=50.0, card_price=D("2.50")), T0)
    assert (over.wanted, over.reason) == (4, "price_ceiling")
    # The ceiling wins over min_gpus.
    assert decide(rule(min_gpus=4, max_price_per_hour=D("5")), Facts(current=4, card_price=D("2.5")), T0).wanted == 2


def test_a_queue_rule_wants_the_depth_over_the_depth_per_card_in_steps():
    queue = {"queue_depth_per_gpu": 10, "target_utilization_pct": None, "queue_depth_at": T0 - MINUTE}
    assert decide(rule(queue_depth=35, step_up=8, **queue), Facts(current=1), T0).wanted == 4
    assert decide(rule(queue_depth=35, step_up=2, **queue), Facts(current=1), T0).wanted == 3
    assert decide(rule(queue_depth=0, min_gpus=0, step_down=8, **queue), Facts(current=4), T0).wanted == 0
    assert decide(rule(queue_depth=1000, step_up=100, **queue), Facts(current=4), T0).wanted == 8
    on = decide(rule(queue_depth=40, **queue), Facts(current=4), T0)
    assert not on.changes and on.status == "ok" and on.data()["queue_depth"] == 40


def test_a_stale_or_missing_queue_depth_holds_the_count():
    stale = rule(queue_depth_per_gpu=10, target_utilization_pct=None, queue_depth=80, queue_depth_at=T0 - 6 * MINUTE)
    decision = decide(stale, Facts(current=2), T0)
    assert not decision.changes and decision.reason == "stale_queue_depth"
    never = rule(queue_depth_per_gpu=10, target_utilization_pct=None)
    assert decide(never, Facts(current=2), T0).reason == "no_queue_depth"


def test_the_settings_are_checked_field_by_field():
    ok = {**elastic.SETTINGS, "max_gpus": 4, "target_utilization_pct": 60}
    assert elastic.rule_errors(ok) == {}
    assert set(elastic.rule_errors({**ok, "queue_depth_per_gpu": 5})) == {
        "target_utilization_pct",
        "queue_depth_per_gpu",
    }
    assert set(elastic.rule_errors({**ok, "target_utilization_pct": None})) == {
        "target_utilization_pct",
        "queue_depth_per_gpu",
    }
    assert set(elastic.rule_errors({**ok, "min_gpus": 5})) == {"min_gpus"}
    assert set(elastic.rule_errors({**ok, "schedule": [{"cron": "* * *", "max_gpus": 1}]})) == {"schedule"}
    assert set(elastic.rule_errors({**ok, "min_gpus": 1, "schedule": [{"cron": "* * * * *", "max_gpus": 0}]})) == {
        "schedule"
    }
    assert set(elastic.rule_errors({**ok, "schedule": [{"cron": "* * * * *", "max_gpus": 5}]})) == {"schedule"}
    with pytest.raises(InvalidInput) as caught:
        elastic.rule_settings({"max_gpus": 2, "target_utilization_pct": 50, "colour": "red"}, within="scaling")
    assert caught.value.fields == {"scaling": {"colour": ["Unknown field."]}}


# --- the database: checks, the beat job ----------------------------------------------------------------------


def _partition(day) -> None:
    telemetry._known_days.discard(day)
    telemetry.ensure_partition_for(day)


@pytest.fixture
def clock():
    with time_machine.travel(T0, tick=False) as traveller:
        _partition(T0.date())
        _partition((T0 + timedelta(days=1)).date())
        yield traveller


@pytest.fixture
def servers(bob, h100):
    """Bob's two online 8-card servers (2.50 a card-hour)."""
    return [online_server(organization=bob.org, gpu_model=h100, gpus=8, name=f"elastic-{i}") for i in range(2)]


class Agents:
    """Each server's agent, reporting its cards' utilisation as the ingest path stores it."""

    def __init__(self) -> None:
        self.seq: dict[int, int] = {}

    def report(self, lease: Lease, utilization: float, *, at: datetime) -> None:
        held = set(Allocation.objects.filter(lease=lease, period__contains=at).values_list("gpu_id", flat=True))
        for server in Server.objects.filter(pk__in=Gpu.objects.filter(pk__in=held).values("server_id")):
            self.seq[server.pk] = self.seq.get(server.pk, 0) + 1
            samples = [
                {"uuid": gpu.uuid, "utilization_pct": utilization if gpu.pk in held else 0.0, "temperature_c": 60}
                for gpu in Gpu.objects.filter(server=server).order_by("index")
            ]
            payload = {"seq": self.seq[server.pk], "sent_at": at.isoformat(), "gpus": samples}
            ingest.report_ingest(server=server, report=ingest.check_report(payload), now=at)


def held(lease: Lease) -> int:
    return Allocation.objects.filter(lease=lease, period__contains=datetime.now(UTC)).count()


def elastic_lease(persona, *, gpu_count: int, interruptible: bool = False, **scaling) -> Lease:
    scaling.setdefault("max_gpus", 8)
    if "queue_depth_per_gpu" not in scaling:
        scaling.setdefault("target_utilization_pct", 70)
    return services.lease_create(
        org=persona.org, plan="card_hour", gpu_count=gpu_count, interruptible=interruptible, scaling=scaling
    )


def test_the_database_refuses_a_rule_outside_its_bounds(alice, servers):
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    for fields in (
        {"min_gpus": 3, "max_gpus": 2, "target_utilization_pct": 50},
        {"max_gpus": 0, "target_utilization_pct": 50},
        {"max_gpus": 2},
        {"max_gpus": 2, "target_utilization_pct": 50, "queue_depth_per_gpu": 4},
        {"max_gpus": 2, "target_utilization_pct": 101},
        {"max_gpus": 2, "queue_depth_per_gpu": 0},
        {"max_gpus": 2, "target_utilization_pct": 50, "step_up": 0},
        {"max_gpus": 2, "target_utilization_pct": 50, "max_price_per_hour": D("-1")},
        {"max_gpus": 2, "target_utilization_pct": 50, "status": "bored"},
    ):
        with pytest.raises(IntegrityError), transaction.atomic():
            ScalingRule.objects.create(lease=lease, **fields)


def test_utilisation_drives_a_lease_from_2_to_8_cards_and_back_within_its_bounds_and_cool_downs(clock, alice, servers):
    lease = elastic_lease(alice, gpu_count=2, min_gpus=2, max_gpus=8, step_up=2, step_down=2, cooldown_seconds=300)
    agents = Agents()
    counts = [held(lease)]

    def minute(utilization: float) -> dict:
        clock.shift(MINUTE / 2)
        agents.report(lease, utilization, at=datetime.now(UTC))
        clock.shift(MINUTE / 2)
        result = scale_leases_task()
        counts.append(held(lease))
        return result

    for _ in range(20):  # busy: 95% on every card
        minute(95.0)
    # Up by 2 at the first run, then once per cool-down (5 minutes), to the maximum and no further.
    assert counts[:2] == [2, 4] and max(counts) == 8
    assert counts.index(6) - counts.index(4) == 5 and counts.index(8) - counts.index(6) == 5
    rule = ScalingRule.objects.get(lease=lease)
    assert rule.status == "at_bound" and rule.desired_gpus == 8
    for _ in range(20):  # idle: 10%
        minute(10.0)
    assert counts[-1] == 2 and min(counts) == 2
    changes = [b for a, b in zip(counts, counts[1:], strict=False) if a != b]
    assert changes == [4, 6, 8, 6, 4, 2]
    events = list(LeaseEvent.objects.filter(lease=lease, kind="scaled").order_by("id"))
    assert [(e.data["from_count"], e.data["to_count"]) for e in events] == [
        (2, 4),
        (4, 6),
        (6, 8),
        (8, 6),
        (6, 4),
        (4, 2),
    ]
    assert [e.data["reason"] for e in events] == ["utilization_high"] * 3 + ["utilization_low"] * 3
    assert events[0].data["utilization_pct"] == 95.0 and events[-1].data["utilization_pct"] == 10.0
    assert all(len(e.data["added"]) + len(e.data["removed"]) == 2 for e in events)
    # Every step a resize: no card held twice at once, the lease's count and its open periods agree.
    lease.refresh_from_db()
    assert lease.gpu_count == 2 and lease.state == "active"
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b "
            "ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.period && b.period"
        )
        assert cursor.fetchone()[0] == 0
    # Billing: each card's period by the second, for the hours that are over.
    clock.move_to(T0 + timedelta(hours=2))
    assert meter() > 0
    for allocation in Allocation.objects.filter(lease=lease):
        end = allocation.period.upper or T0 + timedelta(hours=2)
        billed = sum(r.seconds for r in UsageRecord.objects.filter(allocation=allocation))
        assert billed == D((end - allocation.period.lower).total_seconds())
    assert UsageRecord.objects.filter(lease=lease).values("allocation").distinct().count() == (
        Allocation.objects.filter(lease=lease).count()
    )


def test_short_capacity_waits_and_says_so_then_scales_when_cards_free_up(clock, alice, charlie, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4)
    lease = elastic_lease(alice, gpu_count=2, min_gpus=1, max_gpus=4, step_up=2, queue_depth_per_gpu=10)
    other = services.lease_create(org=charlie.org, plan="card_hour", gpu_count=2)
    elastic.queue_depth_report(lease, 40)
    assert elastic.scale_leases() == {"scaled": 0, "held": 0, "waiting": 1, "refused": 0, "skipped": 0}
    rule = ScalingRule.objects.get(lease=lease)
    assert rule.status == "waiting_capacity" and rule.desired_gpus == 4 and "2 more free cards" in rule.status_message
    assert held(lease) == 2 and not LeaseEvent.objects.filter(lease=lease, kind="scaled").exists()
    clock.shift(MINUTE)
    elastic.queue_depth_report(lease, 40)
    call_command("scale_leases")
    assert held(lease) == 2  # still waiting
    services.lease_end(lease=other)
    clock.shift(MINUTE)
    elastic.queue_depth_report(lease, 40)
    assert elastic.scale_leases()["scaled"] == 1
    assert held(lease) == 4 and ScalingRule.objects.get(lease=lease).status == "scaling"


def test_an_interruptible_elastic_lease_never_takes_an_on_demand_leases_cards(clock, alice, charlie, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4)
    spot = elastic_lease(alice, gpu_count=1, interruptible=True, min_gpus=1, max_gpus=4, queue_depth_per_gpu=1)
    firm = services.lease_create(org=charlie.org, plan="card_hour", gpu_count=3)
    elastic.queue_depth_report(spot, 4)
    assert elastic.scale_leases()["waiting"] == 1
    firm.refresh_from_db()
    assert firm.preempt_at is None and held(firm) == 3 and held(spot) == 1
    assert ScalingRule.objects.get(lease=spot).status == "waiting_capacity"


def test_an_on_demand_elastic_lease_preempts_interruptible_cards_as_a_resize_does(clock, alice, charlie, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=4)
    firm = elastic_lease(alice, gpu_count=1, min_gpus=1, max_gpus=4, step_up=3, queue_depth_per_gpu=1)
    spot = services.lease_create(org=charlie.org, plan="card_hour", gpu_count=3, interruptible=True)
    elastic.queue_depth_report(firm, 4)
    assert elastic.scale_leases()["scaled"] == 1
    spot.refresh_from_db()
    # The spot lease got its notice; the firm lease's new cards are its from the notice's end.
    assert spot.preempt_at is not None and spot.preempt_at > T0
    assert Allocation.objects.filter(lease=firm, period__endswith__isnull=True).count() == 4
    assert Allocation.objects.filter(lease=firm, period__startswith=spot.preempt_at).count() == 3


def test_a_schedule_takes_a_lease_to_0_cards_and_back(clock, alice, servers):
    lease = elastic_lease(
        alice,
        gpu_count=3,
        min_gpus=0,
        max_gpus=4,
        queue_depth_per_gpu=10,
        step_down=4,
        step_up=4,
        schedule=[{"cron": "* 0-9 * * *", "max_gpus": 0}],
    )
    first_server = Allocation.objects.filter(lease=lease).first().server_id
    elastic.queue_depth_report(lease, 30)
    assert elastic.scale_leases()["held"] == 1  # 10:00 is outside the window: 3 cards for a depth of 30
    assert held(lease) == 3
    clock.move_to(T0 + timedelta(hours=23, minutes=30))  # 09:30 the next day: inside the window
    _partition((T0 + timedelta(days=1)).date())
    elastic.queue_depth_report(lease, 30)
    elastic.scale_leases()
    lease.refresh_from_db()
    assert held(lease) == 0 and lease.state == LeaseState.ACTIVE and lease.gpu_count == 0
    event = LeaseEvent.objects.filter(lease=lease, kind="scaled").latest("id")
    assert (event.data["from_count"], event.data["to_count"], event.data["reason"]) == (3, 0, "schedule")
    elastic.scale_leases()
    assert ScalingRule.objects.get(lease=lease).status == "scheduled" and held(lease) == 0
    clock.move_to(T0 + timedelta(days=1, minutes=1))  # 10:01: the window is over
    elastic.queue_depth_report(lease, 30)
    elastic.scale_leases()
    lease.refresh_from_db()
    assert held(lease) == 3 and lease.gpu_count == 3
    # Back on the server it held before (its volumes would be there), on cards of its model.
    now_held = Allocation.objects.filter(lease=lease, period__contains=datetime.now(UTC))
    assert set(now_held.values_list("server_id", flat=True)) == {first_server}


def test_resize_to_0_only_for_a_lease_whose_rule_allows_it(clock, alice, servers):
    plain = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    with pytest.raises(InvalidInput):
        services.lease_resize(lease=plain, gpu_count=0)
    strict = elastic_lease(alice, gpu_count=2, min_gpus=1, max_gpus=4)
    with pytest.raises(InvalidInput):
        services.lease_resize(lease=strict, gpu_count=0)
    loose = elastic_lease(alice, gpu_count=2, min_gpus=0, max_gpus=4, queue_depth_per_gpu=5)
    services.lease_resize(lease=loose, gpu_count=0)
    loose.refresh_from_db()
    assert held(loose) == 0 and loose.state == "active" and loose.delivered_pflops == 0
    with pytest.raises(InvalidInput):
        services.lease_resize(lease=loose, gpu_count=-1)


def test_the_price_ceiling_holds_the_count_on_the_database(clock, alice, servers):
    lease = elastic_lease(alice, gpu_count=2, max_price_per_hour=D("10.00"), queue_depth_per_gpu=1, step_up=8)
    elastic.queue_depth_report(lease, 8)
    elastic.scale_leases()
    assert held(lease) == 4  # 4 x 2.50 = 10.00
    assert ScalingRule.objects.get(lease=lease).status == "scaling"
    clock.shift(10 * MINUTE)
    elastic.queue_depth_report(lease, 8)
    elastic.scale_leases()
    rule = ScalingRule.objects.get(lease=lease)
    assert held(lease) == 4 and rule.status == "at_price_ceiling" and rule.desired_gpus == 4


def test_a_stale_queue_depth_holds_on_the_database(clock, alice, servers):
    lease = elastic_lease(alice, gpu_count=2, queue_depth_per_gpu=10, step_up=8)
    elastic.queue_depth_report(lease, 80)
    clock.shift(6 * MINUTE)
    elastic.scale_leases()
    rule = ScalingRule.objects.get(lease=lease)
    assert held(lease) == 2 and rule.status == "ok" and "too old" in rule.status_message


def test_the_queue_depth_report_needs_a_queue_rule(clock, alice, servers):
    plain = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    with pytest.raises(InvalidTransition) as caught:
        elastic.queue_depth_report(plain, 3)
    assert caught.value.code == "no_scaling_rule"
    busy = elastic_lease(alice, gpu_count=1)
    with pytest.raises(InvalidTransition) as caught:
        elastic.queue_depth_report(busy, 3)
    assert caught.value.code == "not_queue_driven"
    with pytest.raises(InvalidInput):
        elastic.queue_depth_report(busy, -1)


def test_a_second_run_at_the_same_instant_changes_nothing(clock, alice, servers):
    lease = elastic_lease(alice, gpu_count=1, queue_depth_per_gpu=1, step_up=3)
    elastic.queue_depth_report(lease, 4)
    assert elastic.scale_leases()["scaled"] == 1
    assert elastic.scale_leases() == {"scaled": 0, "held": 1, "waiting": 0, "refused": 0, "skipped": 0}
    assert held(lease) == 4 and LeaseEvent.objects.filter(lease=lease, kind="scaled").count() == 1


def test_ended_leases_and_other_plans_are_not_scaled(clock, alice, servers):
    lease = elastic_lease(alice, gpu_count=1, queue_depth_per_gpu=1)
    elastic.queue_depth_report(lease, 4)
    services.lease_end(lease=lease)
    assert elastic.scale_leases() == {"scaled": 0, "held": 0, "waiting": 0, "refused": 0, "skipped": 0}
    with pytest.raises(InvalidTransition):
        elastic.scaling_set(lease, {"max_gpus": 2, "target_utilization_pct": 50})
    contract = services.lease_create(org=alice.org, plan="server_month", servers=1, end_at=T0 + timedelta(days=30))
    with pytest.raises(InvalidInput) as caught:
        elastic.scaling_set(contract, {"max_gpus": 2, "target_utilization_pct": 50})
    assert "scaling" in caught.value.fields


def test_a_decision_is_a_value(clock):
    decision = Decision(current=2, wanted=2, reason="on_target", status="ok", notes=())
    assert not decision.changes and decision.data() == {"from_count": 2, "to_count": 2, "reason": "on_target"}


def test_a_growth_another_service_refuses_is_noted_in_its_own_words(clock, alice, servers):
    from billing import ledger

    ledger.terms_set(org=alice.org, mode="prepaid", credit_limit=D(0), currency=alice.org.currency)
    ledger.adjustment_record(org=alice.org, amount=D("6.00"), currency=alice.org.currency, reference="WIRE-E1")
    lease = elastic_lease(alice, gpu_count=2, min_gpus=1, max_gpus=8, step_up=2)  # 5.00 of 6.00 for its first hour
    clock.shift(MINUTE / 2)
    Agents().report(lease, 95.0, at=datetime.now(UTC))
    clock.shift(MINUTE / 2)
    assert elastic.scale_leases()["refused"] == 1, ScalingRule.objects.get(lease=lease).status_notes
    rule = ScalingRule.objects.get(lease=lease)
    assert held(lease) == 2 and rule.status == "at_bound" and rule.desired_gpus == 4
    above, refusal = rule.status_notes
    assert above == {"code": "utilization_above", "params": {"u": 95, "t": 70}}
    assert refusal["code"] == elastic.MESSAGE and refusal["params"]["text"].startswith("Your balance cannot cover")
    assert rule.status_message == f"Utilisation 95% is above the target 70%. {refusal['params']['text']}"
