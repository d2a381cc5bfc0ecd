"""POST/GET /api/v1/leases/, end, validation, Idempotency-Key, tenancy."""

from __future__ import annotations

from datetime import timedelta

from django.db import connection
from django.utils import timezone

from scheduler.models import Allocation, Lease
from tests.factories import online_server


def rent(persona, **body):
    body.setdefault("plan", "card_hour")
    return persona.api.post("/api/v1/leases/", body, format="json")


def test_a_card_hour_lease_gets_its_cards_on_the_fullest_server_that_fits(alice, rack):
    Allocation.objects.none()
    first = rent(alice, gpu_count=5)
    assert first.status_code == 201, first.content
    body = first.json()
    assert body["state"] == "active" and body["plan"] == "card_hour"
    assert len(body["gpus"]) == 5 and len({g["server"] for g in body["gpus"]}) == 1
    second = rent(alice, gpu_count=3)
    assert second.status_code == 201
    # Best fit: the 3 cards go where 3 are left, not onto an empty server.
    assert {g["server"] for g in second.json()["gpus"]} == {body["gpus"][0]["server"]}


def test_a_request_that_cannot_be_met_in_full_is_409_and_holds_nothing(alice, rack):
    assert rent(alice, gpu_count=20).status_code == 201
    response = rent(alice, gpu_count=5)
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "no_capacity"
    assert Lease.objects.count() == 1 and Allocation.objects.count() == 20


def test_server_month_takes_whole_servers_only(alice, rack):
    assert rent(alice, gpu_count=1).status_code == 201
    end = (timezone.now() + timedelta(days=30)).isoformat()
    response = rent(alice, plan="server_month", servers=2, end_at=end)
    assert response.status_code == 201, response.content
    servers = {g["server"] for g in response.json()["gpus"]}
    assert len(servers) == 2 and len(response.json()["gpus"]) == 16
    assert rent(alice, plan="server_month", servers=1, end_at=end).json()["error"]["code"] == "no_capacity"


def test_pflops_year_delivers_at_least_the_contract(alice, rack):
    end = (timezone.now() + timedelta(days=365)).isoformat()
    response = rent(alice, plan="pflops_year", pflops="5.5", end_at=end)
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["delivered_pflops"] == "5.936"  # 6 x 989.40 TFLOPS
    assert len(body["gpus"]) == 6


def test_filters_pin_model_region_and_server(alice, bob, h100, a100):
    east = online_server(organization=bob.org, gpu_model=h100, region="cn-east-1")
    online_server(organization=bob.org, gpu_model=a100, region="cn-north-1")
    response = rent(alice, gpu_count=2, gpu_model=a100.pk)
    assert response.status_code == 201
    assert {g["server"] for g in response.json()["gpus"]} != {east.pk}
    assert rent(alice, gpu_count=2, region="cn-east-1").json()["gpus"][0]["server"] == east.pk
    assert rent(alice, gpu_count=1, server=east.pk).json()["gpus"][0]["server"] == east.pk


def test_failed_drained_offline_and_unapproved_cards_are_never_allocated(alice, bob, h100):
    from tests.factories import ProviderFactory

    server = online_server(organization=bob.org, gpu_model=h100, gpus=4)
    gpus = list(server.gpus.order_by("index"))
    gpus[0].health = "failed"
    gpus[0].save()
    gpus[1].drained = True
    gpus[1].save()
    online_server(organization=bob.org, gpu_model=h100, status="unreachable", name="gone")
    online_server(organization=ProviderFactory(status="pending"), gpu_model=h100, name="pending")
    online_server(organization=bob.org, gpu_model=h100, drained=True, name="drained")
    response = rent(alice, gpu_count=2)
    assert response.status_code == 201
    assert {g["uuid"] for g in response.json()["gpus"]} == {gpus[2].uuid, gpus[3].uuid}
    assert rent(alice, gpu_count=1).status_code == 409


def test_validation_answers_clear_400s(alice, rack):
    now = timezone.now()
    cases = [
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": 25}, "gpu_count"),  # more than the 24 that could ever be allocated
        ({}, "gpu_count"),
        ({"plan": "pflops_year", "pflops": "0", "end_at": (now + timedelta(days=1)).isoformat()}, "pflops"),
        ({"plan": "pflops_year", "pflops": "1.0001", "end_at": (now + timedelta(days=1)).isoformat()}, "pflops"),
        ({"plan": "server_month"}, "end_at"),
        ({"gpu_count": 1, "start_at": (now - timedelta(hours=1)).isoformat()}, "start_at"),
        ({"gpu_count": 1, "start_at": (now + timedelta(days=400)).isoformat()}, "start_at"),
        (
            {
                "gpu_count": 1,
                "start_at": (now + timedelta(hours=2)).isoformat(),
                "end_at": (now + timedelta(hours=1)).isoformat(),
            },
            "end_at",
        ),
        ({"gpu_count": 1, "offer": 12345}, "offer"),
        ({"gpu_count": 1, "servers": 2}, "servers"),
        ({"gpu_count": 1, "organization": 1}, "organization"),
    ]
    for body, field in cases:
        response = rent(alice, **body)
        assert response.status_code == 400, (body, response.content)
        assert response.json()["error"]["code"] == "invalid"
        assert field in response.json()["error"]["fields"], (body, response.json())
    assert Lease.objects.count() == 0


def test_a_reservation_holds_its_cards_for_its_time_range_only(alice, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=2)
    now = timezone.now()
    later = {"start_at": (now + timedelta(hours=2)).isoformat(), "end_at": (now + timedelta(hours=4)).isoformat()}
    response = rent(alice, gpu_count=2, **later)
    assert response.status_code == 201 and response.json()["state"] == "scheduled"
    # Now until the reservation starts the cards are free; overlapping it they are not.
    assert rent(alice, gpu_count=2, end_at=(now + timedelta(hours=1)).isoformat()).status_code == 201
    assert rent(alice, gpu_count=1, **later).status_code == 409


def test_end_closes_the_periods_now_and_frees_the_cards(alice, bob, h100):
    online_server(organization=bob.org, gpu_model=h100, gpus=2)
    lease = rent(alice, gpu_count=2).json()
    response = alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
    assert response.status_code == 200 and response.json()["state"] == "ended"
    assert response.json()["gpus"] == []
    assert all(a.period.upper is not None for a in Allocation.objects.all())
    assert rent(alice, gpu_count=2).status_code == 201
    again = alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
    assert again.status_code == 409 and again.json()["error"]["code"] == "invalid_state"


def test_ending_a_future_reservation_cancels_it(alice, rack):
    now = timezone.now()
    lease = rent(
        alice,
        gpu_count=1,
        start_at=(now + timedelta(hours=1)).isoformat(),
        end_at=(now + timedelta(hours=2)).isoformat(),
    ).json()
    response = alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
    assert response.status_code == 200 and response.json()["state"] == "cancelled"
    assert not Allocation.objects.filter(lease_id=lease["id"]).exists()


def test_the_same_idempotency_key_replays_the_first_answer(alice, rack):
    headers = {"HTTP_IDEMPOTENCY_KEY": "abc-1"}
    first = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 2}, format="json", **headers)
    second = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 2}, format="json", **headers)
    assert first.status_code == second.status_code == 201
    assert first.json() == second.json()
    assert Lease.objects.count() == 1
    other = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 3}, format="json", **headers)
    assert other.status_code == 409 and other.json()["error"]["code"] == "idempotency_key_reused"
    lease_id = first.json()["id"]
    end1 = alice.api.post(f"/api/v1/leases/{lease_id}/end/", {}, format="json", HTTP_IDEMPOTENCY_KEY="end-1")
    end2 = alice.api.post(f"/api/v1/leases/{lease_id}/end/", {}, format="json", HTTP_IDEMPOTENCY_KEY="end-1")
    assert end1.status_code == end2.status_code == 200 and end1.json() == end2.json()


def test_a_no_capacity_answer_is_replayed_and_a_400_is_not_kept(alice, rack):
    headers = {"HTTP_IDEMPOTENCY_KEY": "k2"}
    bad = alice.api.post("/api/v1/leases/", {"plan": "card_hour"}, format="json", **headers)
    assert bad.status_code == 400
    assert rent(alice, gpu_count=24).status_code == 201
    full = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json", **headers)
    assert full.status_code == 409 and full.json()["error"]["code"] == "no_capacity"
    Lease.objects.update(state="ended")
    Allocation.objects.all().delete()
    again = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json", **headers)
    assert again.status_code == 409 and again.json() == full.json()


def test_idempotency_records_live_at_least_a_day(alice, rack):
    from accounts.models import IdempotencyRecord

    alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1}, format="json", HTTP_IDEMPOTENCY_KEY="d")
    record = IdempotencyRecord.objects.get(key="d")
    assert record.expires_at - record.created_at >= timedelta(hours=24)


def test_another_tenant_and_providers_cannot_touch_a_lease(alice, bob, charlie, staff, rack):
    lease = rent(alice, gpu_count=1).json()
    for path in (f"/api/v1/leases/{lease['id']}/", f"/api/v1/leases/{lease['id']}/events/"):
        assert charlie.api.get(path).status_code == 404
        assert staff.api.get(path).status_code == 200
    assert charlie.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 404
    assert staff.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 404
    assert charlie.api.get("/api/v1/leases/").json()["count"] == 0
    assert rent(bob, gpu_count=1).status_code == 403  # a provider-only organisation does not rent


def test_the_server_detail_shows_which_cards_are_allocated(alice, bob, rack):
    lease = rent(alice, gpu_count=2).json()
    server_id = lease["gpus"][0]["server"]
    cards = bob.api.get(f"/api/v1/servers/{server_id}/").json()["gpus"]
    held = {g["uuid"] for g in lease["gpus"]}
    assert {c["uuid"] for c in cards if c["allocated"]} == held
    alice.api.post(f"/api/v1/leases/{lease['id']}/end/")
    assert not any(c["allocated"] for c in bob.api.get(f"/api/v1/servers/{server_id}/").json()["gpus"])


def test_no_two_allocations_of_a_card_overlap_in_sql(alice, rack):
    for _ in range(4):
        rent(alice, gpu_count=5)
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b "
            "ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.period && b.period"
        )
        assert cursor.fetchone()[0] == 0
