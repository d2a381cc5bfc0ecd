"""The elastic lease API (API.md, Elastic leases and resale): `scaling` on lease create and in the lease's output,
GET/PUT/DELETE /api/v1/leases/{id}/scaling/, POST /api/v1/leases/{id}/queue-depth/; every 4xx."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Role
from scheduler import elastic
from scheduler.models import Allocation, ScalingRule
from tests.conftest import make_persona
from tests.factories import online_server

RULE = {"min_gpus": 1, "max_gpus": 4, "target_utilization_pct": 70}
QUEUE = {"min_gpus": 0, "max_gpus": 4, "queue_depth_per_gpu": 10, "step_up": 4, "cooldown_seconds": 60}


@pytest.fixture
def servers(bob, h100):
    return [online_server(organization=bob.org, gpu_model=h100, gpus=8, name=f"api-elastic-{i}") for i in range(2)]


def create(persona, **body):
    body.setdefault("plan", "card_hour")
    body.setdefault("gpu_count", 1)
    return persona.api.post("/api/v1/leases/", body, format="json")


def error(response) -> dict:
    return response.json()["error"]


def test_a_lease_created_with_a_rule_shows_it_and_its_state(alice, servers):
    schedule = [{"cron": f"* {(timezone.now().hour + 12) % 24} * * *", "max_gpus": 0}]  # a window that is not now
    response = create(alice, gpu_count=2, scaling={**QUEUE, "schedule": schedule, "max_price_per_hour": "20.5"})
    assert response.status_code == 201, response.content
    scaling = response.json()["scaling"]
    assert scaling == {
        "min_gpus": 0,
        "max_gpus": 4,
        "target_utilization_pct": None,
        "queue_depth_per_gpu": 10,
        "step_up": 4,
        "step_down": 1,
        "cooldown_seconds": 60,
        "schedule": schedule,
        "max_price_per_hour": "20.500000",
        "currency": alice.org.currency,
        "queue_depth": None,
        "queue_depth_at": None,
        "last_scaled_at": None,
        "evaluated_at": None,
        "desired_gpus": None,
        "status": "ok",
        "status_message": "",
    }
    lease_id = response.json()["id"]
    assert alice.api.get(f"/api/v1/leases/{lease_id}/").json()["scaling"]["queue_depth_per_gpu"] == 10
    assert alice.api.get(f"/api/v1/leases/{lease_id}/scaling/").json() == scaling
    listed = alice.api.get("/api/v1/leases/").json()["results"]
    assert [lease["scaling"] is not None for lease in listed] == [True]
    # The job reports its queue; the beat job follows it and the API shows what it did.
    reported = alice.api.post(f"/api/v1/leases/{lease_id}/queue-depth/", {"depth": 35}, format="json")
    assert reported.status_code == 200 and reported.json()["queue_depth"] == 35
    elastic.scale_leases()
    body = alice.api.get(f"/api/v1/leases/{lease_id}/").json()
    assert len(body["gpus"]) == 4 and body["gpu_count"] == 4
    assert body["scaling"]["desired_gpus"] == 4 and body["scaling"]["status"] == "scaling"
    events = alice.api.get(f"/api/v1/leases/{lease_id}/events/").json()["results"]
    assert events[-1]["kind"] == "scaled" and events[-1]["data"]["reason"] == "queue_depth"
    assert events[-1]["data"]["queue_depth"] == 35


def test_a_lease_without_a_rule_shows_none(alice, servers):
    response = create(alice)
    assert response.status_code == 201 and response.json()["scaling"] is None
    missing = alice.api.get(f"/api/v1/leases/{response.json()['id']}/scaling/")
    assert missing.status_code == 404 and error(missing)["code"] == "no_scaling_rule"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"scaling": {"max_gpus": 4}}, "target_utilization_pct"),
        ({"scaling": {"max_gpus": 4, "target_utilization_pct": 50, "queue_depth_per_gpu": 2}}, "queue_depth_per_gpu"),
        ({"scaling": {"min_gpus": 5, "max_gpus": 4, "target_utilization_pct": 50}}, "min_gpus"),
        ({"scaling": {"max_gpus": 0, "target_utilization_pct": 50}}, "max_gpus"),
        ({"scaling": {"target_utilization_pct": 50}}, "max_gpus"),
        ({"scaling": {**RULE, "target_utilization_pct": 0}}, "target_utilization_pct"),
        ({"scaling": {**RULE, "target_utilization_pct": 101}}, "target_utilization_pct"),
        ({"scaling": {**RULE, "step_up": 0}}, "step_up"),
        ({"scaling": {**RULE, "cooldown_seconds": -1}}, "cooldown_seconds"),
        ({"scaling": {**RULE, "max_price_per_hour": "0"}}, "max_price_per_hour"),
        ({"scaling": {**RULE, "max_price_per_hour": "NaN"}}, "max_price_per_hour"),
        ({"scaling": {**RULE, "schedule": [{"cron": "* * *", "max_gpus": 1}]}}, "schedule"),
        ({"scaling": {**RULE, "schedule": [{"cron": "-1 * * * *", "max_gpus": 1}]}}, "schedule"),
        ({"scaling": {**RULE, "schedule": [{"cron": "1,,2 * * * *", "max_gpus": 1}]}}, "schedule"),
        ({"scaling": {**RULE, "schedule": [{"cron": "* * * * *", "max_gpus": 0}]}}, "schedule"),  # below min
        ({"scaling": {**RULE, "schedule": [{"cron": "* * * * *", "max_gpus": 9}]}}, "schedule"),  # above max
        ({"scaling": {**RULE, "schedule": [{"cron": "* * * * *"}]}}, "schedule"),
        ({"scaling": {**RULE, "schedule": "nightly"}}, "schedule"),
        ({"scaling": {**RULE, "colour": "red"}}, "colour"),
        ({"scaling": [1, 2]}, "non_field_errors"),
    ],
)
def test_a_bad_rule_on_create_is_a_400_naming_its_field(alice, servers, body, field):
    response = create(alice, **body)
    assert response.status_code == 400, response.content
    assert field in error(response)["fields"]["scaling"], error(response)
    assert not ScalingRule.objects.exists() and not Allocation.objects.exists()


def test_a_rule_on_another_plan_or_outside_the_count_is_a_400(alice, servers):
    end = (timezone.now() + timedelta(days=30)).isoformat()
    contract = create(alice, plan="server_month", gpu_count=None, servers=1, end_at=end, scaling=RULE)
    assert contract.status_code == 400 and "scaling" in error(contract)["fields"]
    outside = create(alice, gpu_count=6, scaling=RULE)
    assert outside.status_code == 400 and "gpu_count" in error(outside)["fields"]
    assert not ScalingRule.objects.exists()


def test_put_gives_replaces_and_delete_removes_the_rule(alice, servers):
    lease_id = create(alice, gpu_count=2).json()["id"]
    url = f"/api/v1/leases/{lease_id}/scaling/"
    given = alice.api.put(url, QUEUE, format="json")
    assert given.status_code == 200, given.content
    assert given.json()["queue_depth_per_gpu"] == 10 and given.json()["step_down"] == 1
    alice.api.post(f"/api/v1/leases/{lease_id}/queue-depth/", {"depth": 7}, format="json")
    # PUT replaces the settings (omitted ones take their defaults) and keeps the state.
    replaced = alice.api.put(url, {**RULE, "step_down": 2}, format="json")
    assert replaced.status_code == 200
    body = replaced.json()
    assert body["target_utilization_pct"] == 70 and body["queue_depth_per_gpu"] is None
    assert body["step_down"] == 2 and body["cooldown_seconds"] == 300 and body["queue_depth"] == 7
    again = alice.api.put(url, {**RULE, "step_down": 2}, format="json")
    assert again.status_code == 200 and again.json() == body
    assert alice.api.delete(url).status_code == 204
    assert alice.api.delete(url).status_code == 204  # a retry
    assert alice.api.get(url).status_code == 404
    assert alice.api.get(f"/api/v1/leases/{lease_id}/").json()["scaling"] is None
    assert Allocation.objects.filter(lease_id=lease_id, period__endswith__isnull=True).count() == 2


def test_put_with_an_idempotency_key_replays(alice, servers):
    lease_id = create(alice).json()["id"]
    url = f"/api/v1/leases/{lease_id}/scaling/"
    first = alice.api.put(url, RULE, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    second = alice.api.put(url, RULE, format="json", HTTP_IDEMPOTENCY_KEY="k-1")
    assert first.status_code == second.status_code == 200 and first.json() == second.json()


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"max_gpus": 2},
        {"max_gpus": 2, "target_utilization_pct": 50, "queue_depth_per_gpu": 1},
        {"max_gpus": 2, "target_utilization_pct": 50, "min_gpus": 3},
        {"max_gpus": 2, "target_utilization_pct": 50, "status": "ok"},
        {"max_gpus": 2, "target_utilization_pct": 50, "schedule": [{"cron": "every day", "max_gpus": 1}]},
        {"max_gpus": 2000, "target_utilization_pct": 50},
        {"max_gpus": "two", "target_utilization_pct": 50},
    ],
)
def test_a_bad_put_is_a_400_with_fields(alice, servers, body):
    lease_id = create(alice).json()["id"]
    response = alice.api.put(f"/api/v1/leases/{lease_id}/scaling/", body, format="json")
    assert response.status_code == 400, response.content
    assert error(response)["code"] == "invalid" and error(response)["fields"]
    assert not ScalingRule.objects.exists()


def test_put_on_a_contract_is_a_400_and_on_an_ended_lease_a_409(alice, servers):
    end = (timezone.now() + timedelta(days=30)).isoformat()
    contract = create(alice, plan="server_month", gpu_count=None, servers=1, end_at=end).json()["id"]
    response = alice.api.put(f"/api/v1/leases/{contract}/scaling/", RULE, format="json")
    assert response.status_code == 400 and "scaling" in error(response)["fields"]
    ended = create(alice).json()["id"]
    alice.api.post(f"/api/v1/leases/{ended}/end/")
    response = alice.api.put(f"/api/v1/leases/{ended}/scaling/", RULE, format="json")
    assert response.status_code == 409 and error(response)["code"] == "invalid_state"
    assert error(response)["message"] == "This lease is ended and cannot have a scaling rule."


def test_queue_depth_refusals(alice, servers):
    plain = create(alice).json()["id"]
    response = alice.api.post(f"/api/v1/leases/{plain}/queue-depth/", {"depth": 3}, format="json")
    assert response.status_code == 409 and error(response)["code"] == "no_scaling_rule"
    busy = create(alice, scaling=RULE).json()["id"]
    response = alice.api.post(f"/api/v1/leases/{busy}/queue-depth/", {"depth": 3}, format="json")
    assert response.status_code == 409 and error(response)["code"] == "not_queue_driven"
    queued = create(alice, scaling={**QUEUE, "min_gpus": 1}).json()["id"]
    for body in ({}, {"depth": -1}, {"depth": "many"}, {"depth": 1.5}, {"depth": 3, "queue": "a"}, [3]):
        response = alice.api.post(f"/api/v1/leases/{queued}/queue-depth/", body, format="json")
        assert response.status_code == 400, (body, response.content)
    assert ScalingRule.objects.get(lease_id=queued).queue_depth is None
    assert alice.api.post(f"/api/v1/leases/{queued}/queue-depth/", {"depth": 0}, format="json").status_code == 200


def test_another_tenants_lease_is_a_404_on_every_verb(alice, charlie, servers):
    lease_id = create(alice, scaling=QUEUE | {"min_gpus": 1}).json()["id"]
    url = f"/api/v1/leases/{lease_id}/scaling/"
    assert charlie.api.get(url).status_code == 404
    assert charlie.api.put(url, RULE, format="json").status_code == 404
    assert charlie.api.delete(url).status_code == 404
    depth = charlie.api.post(f"/api/v1/leases/{lease_id}/queue-depth/", {"depth": 9}, format="json")
    assert depth.status_code == 404
    rule = ScalingRule.objects.get(lease_id=lease_id)
    assert rule.queue_depth is None and rule.queue_depth_per_gpu == 10


def test_a_billing_member_reads_but_may_not_change_the_rule(alice, servers):
    lease_id = create(alice, scaling=RULE).json()["id"]
    reader = make_persona(alice.org, role=Role.BILLING)
    url = f"/api/v1/leases/{lease_id}/scaling/"
    assert reader.api.get(url).status_code == 200
    assert reader.api.put(url, QUEUE, format="json").status_code == 403
    assert reader.api.delete(url).status_code == 403
    assert reader.api.post(f"/api/v1/leases/{lease_id}/queue-depth/", {"depth": 1}, format="json").status_code == 403
    assert ScalingRule.objects.get(lease_id=lease_id).target_utilization_pct == 70


def test_anonymous_is_a_401(alice, anon, servers):
    lease_id = create(alice, scaling=RULE).json()["id"]
    assert anon.get(f"/api/v1/leases/{lease_id}/scaling/").status_code == 401
    assert anon.post(f"/api/v1/leases/{lease_id}/queue-depth/", {"depth": 1}, format="json").status_code == 401


def test_the_schema_names_the_routes_and_shapes(alice):
    schema = alice.api.get("/api/schema/", HTTP_ACCEPT="application/json").json()
    scaling = schema["paths"]["/api/v1/leases/{id}/scaling/"]
    assert set(scaling) >= {"get", "put", "delete"}
    assert scaling["put"]["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ScalingInputRequest"
    )
    assert scaling["get"]["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "/ScalingOutput"
    )
    assert "204" in scaling["delete"]["responses"]
    depth = schema["paths"]["/api/v1/leases/{id}/queue-depth/"]["post"]
    assert depth["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/QueueDepthInputRequest")
    components = schema["components"]["schemas"]
    assert "scaling" in components["LeaseWithWorkloadInputRequest"]["properties"]
    assert "scaling" in components["LeaseWithWorkloadsOutput"]["properties"]
    assert set(components["ScalingOutput"]["properties"]) >= {"status", "desired_gpus", "schedule"}
