"""The elastic lease's chart (scheduler/elastic_history.py, GET /api/v1/leases/{id}/scaling/history/): cards held
over time as steps from the allocations, beside the mean utilisation of the held cards from telemetry, and the
resizes (by the rule or by hand)."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from django.db import connection
from django.utils import timezone

from inventory import telemetry
from inventory.models import Gpu
from scheduler.elastic_history import held_cards_series, lease_scaling_history
from scheduler.models import LeaseEvent
from scheduler.selectors import lease_telemetry
from scheduler.services import lease_create, lease_end, lease_resize
from scheduler.transitions import append_event
from tests.cli.conftest import assert_valid, response_schema
from tests.factories import GpuModelFactory, online_server

pytestmark = pytest.mark.django_db


@pytest.fixture
def offer(bob):
    model = GpuModelFactory(slug="elastic-h100", name="Elastic H100")
    return online_server(organization=bob.org, gpu_model=model, name="bob-elastic-box").offers.get()


def _samples(gpus, moments, util):
    return [
        (at, gpu.pk, gpu.server_id, util, 4096, 60.0, 300.0, 1400, 0, 0, json.dumps({}))
        for gpu in gpus
        for at in moments
    ]


def _grown(alice, offer, start):
    """A lease of 2 cards from `start`, 4 from +10 min (by hand), 6 from +20 min, 3 from +40 min."""
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, now=start)
    lease_resize(lease=lease, gpu_count=4, now=start + timedelta(minutes=10))
    lease_resize(lease=lease, gpu_count=6, now=start + timedelta(minutes=20))
    lease_resize(lease=lease, gpu_count=3, now=start + timedelta(minutes=40))
    return lease


def test_the_cards_held_are_a_step_series_from_the_allocation_periods(alice, offer):
    start = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    lease = _grown(alice, offer, start)
    points = held_cards_series(lease=lease, since=start - timedelta(minutes=5), until=start + timedelta(minutes=50))
    assert [(p["t"] - start, p["gpus"]) for p in points] == [
        (timedelta(minutes=-5), 0),
        (timedelta(0), 2),
        (timedelta(minutes=10), 4),
        (timedelta(minutes=20), 6),
        (timedelta(minutes=40), 3),
        (timedelta(minutes=50), 3),
    ]
    # A window that starts in the middle counts the cards held at its start.
    middle = held_cards_series(lease=lease, since=start + timedelta(minutes=15), until=start + timedelta(minutes=30))
    assert [(p["t"] - start, p["gpus"]) for p in middle] == [
        (timedelta(minutes=15), 4),
        (timedelta(minutes=20), 6),
        (timedelta(minutes=30), 6),
    ]
    lease_end(lease=lease, now=start + timedelta(minutes=45))
    ended = held_cards_series(lease=lease, since=start + timedelta(minutes=30), until=start + timedelta(minutes=50))
    assert [(p["t"] - start, p["gpus"]) for p in ended][-2:] == [(timedelta(minutes=45), 0), (timedelta(minutes=50), 0)]


def test_the_mean_utilisation_is_over_the_cards_held_in_each_bucket_and_nothing_of_other_tenants(alice, offer):
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(hours=1)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, now=start)
    first = list(Gpu.objects.filter(allocations__lease=lease))
    lease_resize(lease=lease, gpu_count=4, now=start + timedelta(minutes=10))
    added = list(Gpu.objects.filter(allocations__lease=lease).exclude(pk__in=[g.pk for g in first]))
    strangers = list(Gpu.objects.filter(server=offer.server).exclude(allocations__lease=lease))
    assert len(added) == 2 and len(strangers) == 4
    rows = (
        _samples(first, [start + timedelta(minutes=5, seconds=5)], 90.0)
        + _samples(first, [start + timedelta(minutes=15, seconds=5)], 80.0)
        + _samples(added, [start + timedelta(minutes=15, seconds=5)], 40.0)
        # Before the lease held them, and cards it never held: neither counts.
        + _samples(added, [start + timedelta(minutes=5, seconds=5)], 5.0)
        + _samples(strangers, [start + timedelta(minutes=15, seconds=5)], 1.0)
    )
    telemetry.copy_samples(rows)
    history = lease_scaling_history(
        lease=lease, since=start, until=start + timedelta(minutes=30), step=30, now=start + timedelta(minutes=31)
    )
    assert history["source"] == "raw" and history["step"] == 30
    by_minute = {p["t"]: (p["utilization_pct"], p["cards"]) for p in history["utilization"]}
    assert by_minute == {
        (start + timedelta(minutes=5)).isoformat(): (90.0, 2),
        (start + timedelta(minutes=15)).isoformat(): (60.0, 4),
    }
    assert [p["gpus"] for p in history["gpus"]] == [2, 4, 4]


def test_the_resizes_say_who_made_them_and_why(alice, offer):
    start = timezone.now().replace(microsecond=0) - timedelta(hours=1)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=2, offer=offer, now=start)
    lease_resize(lease=lease, gpu_count=3, now=start + timedelta(minutes=5))
    append_event(
        lease,
        start + timedelta(minutes=8),
        LeaseEvent.Kind.SCALED,
        from_count=3,
        to_count=5,
        reason="utilization_high",
        utilization_pct=93.5,
    )
    append_event(lease, start + timedelta(minutes=9), LeaseEvent.Kind.SCALED, reason="broken")  # no counts: left out
    history = lease_scaling_history(lease=lease, since=start, until=start + timedelta(minutes=30), step=60)
    assert [(s["t"] - start, s["from_gpus"], s["to_gpus"], s["by"], s["reason"]) for s in history["steps"]] == [
        (timedelta(minutes=5), 2, 3, "customer", ""),
        (timedelta(minutes=8), 3, 5, "rule", "utilization_high"),
    ]


def test_a_rollup_minute_shared_with_the_tenant_before_is_left_out(alice, offer):
    start = timezone.now().replace(second=30, microsecond=0) - timedelta(hours=3)
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer, now=start)
    gpu = Gpu.objects.get(allocations__lease=lease)
    minute = start.replace(second=0)
    with connection.cursor() as cursor:
        for bucket, util in [(minute, 99.0), (minute + timedelta(minutes=1), 40.0)]:
            cursor.execute(
                "INSERT INTO inventory_gpusample_1m (gpu_id, bucket, server_id, samples, utilization_pct, "
                "memory_used_mb) VALUES (%s, %s, %s, 6, %s, 1024)",
                [gpu.pk, bucket, gpu.server_id, util],
            )
    history = lease_scaling_history(
        lease=lease, since=minute - timedelta(minutes=30), until=minute + timedelta(minutes=30), step=60
    )
    assert history["source"] == "1m"
    assert [(p["utilization_pct"], p["cards"]) for p in history["utilization"]] == [(40.0, 1)]


def test_the_mean_is_the_mean_of_the_per_card_series_the_telemetry_charts_show(alice, offer):
    start = timezone.now().replace(second=0, microsecond=0) - timedelta(minutes=50)
    lease = _grown(alice, offer, start)
    for allocation in lease.allocations.all():
        end = allocation.period.upper or start + timedelta(minutes=50)
        moments, at, k = [], allocation.period.lower, 0
        while at < end:
            moments.append((at, 30.0 + (allocation.gpu.index * 7 + k) % 60))
            at, k = at + timedelta(seconds=20), k + 1
        telemetry.copy_samples(
            [(t, allocation.gpu_id, allocation.server_id, u, 1, 1.0, 1.0, 1, 0, 0, json.dumps({})) for t, u in moments]
        )
    query = {"since": start, "until": start + timedelta(minutes=50), "step": 30}
    history = lease_scaling_history(lease=lease, **query)
    per_card = lease_telemetry(lease=lease, **query)
    buckets: dict[str, list[float]] = {}
    for card in per_card["gpus"]:
        for point in card["points"]:
            buckets.setdefault(point["t"], []).append(point["utilization_pct"])
    expected = [(t, round(sum(v) / len(v), 2), len(v)) for t, v in sorted(buckets.items())]
    got = [(p["t"], p["utilization_pct"], p["cards"]) for p in history["utilization"]]
    assert len(got) == len(expected) == 100
    for (t1, mean1, n1), (t2, mean2, n2) in zip(got, expected, strict=True):
        assert t1 == t2 and n1 == n2 and abs(mean1 - mean2) <= 0.011, (t1, mean1, mean2)
    assert {n for _, _, n in got} == {2, 3, 4, 6}


def test_the_history_api_by_default_covers_the_last_hour_and_checks_its_parameters_and_tenancy(
    alice, charlie, anon, offer
):
    start = timezone.now().replace(microsecond=0) - timedelta(minutes=30)
    lease = _grown(alice, offer, start - timedelta(minutes=30))
    url = f"/api/v1/leases/{lease.pk}/scaling/history/"
    response = alice.api.get(url)
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["lease"] == lease.pk and body["step"] == 10
    assert [p["gpus"] for p in body["gpus"]] == [2, 4, 6, 3, 3]
    assert [(s["from_gpus"], s["to_gpus"], s["by"]) for s in body["steps"]] == [
        (2, 4, "customer"),
        (4, 6, "customer"),
        (6, 3, "customer"),
    ]
    openapi = anon.get("/api/schema/", {"format": "json"}).json()
    assert_valid(body, response_schema(openapi, "/api/v1/leases/{id}/scaling/history/"))
    assert alice.api.get(url, {"since": "garbage"}).status_code == 400
    backwards = alice.api.get(url, {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"})
    assert backwards.status_code == 400 and backwards.json()["error"]["fields"]["until"]
    assert alice.api.get(url, {"since": "2020-01-01T00:00:00Z", "step": 1}).status_code == 400
    assert alice.api.get(url, {"bogus": "1"}).status_code == 400
    foreign = charlie.api.get(url)
    assert foreign.status_code == 404 and foreign.json()["error"]["code"] == "not_found"
    assert alice.api.get("/api/v1/leases/99999999/scaling/history/").status_code == 404


@pytest.mark.parametrize(
    "query",
    [
        {"until": "0001-01-01T00:00:00Z"},
        {"until": "9999-12-31T23:59:59Z"},
        {"since": "0001-01-01T00:00:00Z"},
        {"since": "9999-12-31T23:59:59Z"},
        {"since": "0001-01-01T00:00:00Z", "until": "9999-12-31T23:59:59Z", "step": 2592000},
    ],
)
def test_dates_at_the_ends_of_the_calendar_are_a_400_never_a_500(alice, offer, query):
    lease = lease_create(org=alice.org, plan="card_hour", gpu_count=1, offer=offer)
    response = alice.api.get(f"/api/v1/leases/{lease.pk}/scaling/history/", query)
    assert response.status_code == 400, response.content
    assert response.json()["error"]["fields"]
