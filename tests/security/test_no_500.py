"""API.md: never a 500 for anything a client can send. One test per input a probe found answered with a traceback
(issue 13): out-of-range integers, deeply nested JSON, far dates, strings PostgreSQL cannot store, months outside
the calendar the platform keeps, and non-ASCII digits; each must be a 400 in API.md's error shape."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime

import pytest
from rest_framework.test import APIClient

from inventory import ingest
from inventory.models import Offer
from scheduler import services
from tests.factories import online_server
from tests.workloads import conftest as workloads_conftest
from tests.workloads.conftest import rent_with_workload

# The workloads tests' fixtures: an enrolled box with its agent; telemetry partitions forgotten after each test.
box, h100 = workloads_conftest.box, workloads_conftest.h100
_forget_telemetry_partitions = workloads_conftest._forget_telemetry_partitions


def assert_400(response, field: str | None = None) -> dict:
    assert response.status_code == 400, (response.status_code, response.content)
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "fields"} <= set(body["error"]), body
    if field is not None:
        assert field in json.dumps(body["error"]["fields"]), body
    return body["error"]


# --- integers out of PostgreSQL's range ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"plan": "card_hour", "gpu_count": 2**31}, "gpu_count"),
        ({"plan": "card_hour", "gpu_count": 10**18}, "gpu_count"),
        ({"plan": "server_month", "servers": 2**31, "end_at": "2030-01-01T00:00:00Z"}, "servers"),
    ],
)
def test_a_lease_for_more_cards_or_servers_than_an_integer_holds_is_400(alice, bob, body, field):
    online_server(organization=bob.org)
    assert_400(alice.api.post("/api/v1/leases/", body, format="json"), field)


def test_a_resize_to_more_cards_than_an_integer_holds_is_400(alice, bob):
    online_server(organization=bob.org)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    assert_400(alice.api.post(f"/api/v1/leases/{lease.pk}/resize/", {"gpu_count": 2**31}, format="json"), "gpu_count")


# --- JSON nested deeper than the parser allows -----------------------------------------------------------------

DEEP = b"[" * 6000


@pytest.mark.parametrize(
    ("persona", "path"),
    [
        (None, "/api/v1/auth/token/"),
        (None, "/api/v1/auth/register/"),
        (None, "/api/v1/agent/enroll/"),
        ("alice", "/api/v1/leases/"),
        ("alice", "/api/v1/ssh-keys/"),
        ("alice", "/api/v1/auth/keys/"),
        ("bob", "/api/v1/offers/"),
        ("bob", "/api/v1/servers/"),
    ],
)
def test_a_body_of_deeply_nested_brackets_is_a_400_parse_error(request, persona, path):
    client = request.getfixturevalue(persona).api if persona else APIClient()
    error = assert_400(client.post(path, data=DEEP, content_type="application/json"))
    assert error["code"] == "malformed_request"


def test_a_deeply_nested_body_signed_out_is_never_a_500(db):
    for path in ("/api/v1/leases/", "/api/v1/offers/", "/api/v1/ssh-keys/", "/api/v1/orgs/"):
        response = APIClient().post(path, data=DEEP, content_type="application/json")
        assert response.status_code in (400, 401), (path, response.status_code)


def test_nesting_within_the_limit_is_parsed_and_just_over_it_is_refused(alice):
    from accounts.parsers import MAX_DEPTH

    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    too_deep = "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1)
    in_strings = json.dumps({"name": "[" * 10_000})  # brackets inside a string are not nesting
    assert alice.api.post("/api/v1/auth/keys/", data=ok, content_type="application/json").status_code == 400
    assert alice.api.post("/api/v1/auth/keys/", data=in_strings, content_type="application/json").status_code == 400
    error = assert_400(alice.api.post("/api/v1/auth/keys/", data=too_deep, content_type="application/json"))
    assert error["code"] == "malformed_request"


# --- dates the window arithmetic cannot reach -----------------------------------------------------------------


@pytest.mark.parametrize("until", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_lease_telemetry_until_year_one_is_400(alice, bob, until):
    online_server(organization=bob.org)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    assert_400(alice.api.get(f"/api/v1/leases/{lease.pk}/telemetry/", {"until": until}), "until")


@pytest.mark.parametrize("until", ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z"])
def test_server_telemetry_until_year_one_is_400(bob, until):
    server = online_server(organization=bob.org)
    assert_400(bob.api.get(f"/api/v1/servers/{server.pk}/telemetry/", {"until": until}), "until")


def test_a_lease_ending_in_year_9999_is_400(alice, bob):
    online_server(organization=bob.org)
    body = {"plan": "card_hour", "gpu_count": 1, "end_at": "9999-12-31T23:59:59-14:00"}
    assert_400(alice.api.post("/api/v1/leases/", body, format="json"), "end_at")


# --- signed agent reports --------------------------------------------------------------------------------------


@pytest.fixture
def agent(bob):
    server = online_server(organization=bob.org, gpus=1, offer=False)
    secret = ingest.agent_credentials_issue(server=server)
    return server, secret


def post_report(agent, payload: dict | bytes):
    server, secret = agent
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    stamp = str(int(time.time()))
    signature = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return APIClient().post(
        "/api/v1/agent/reports/",
        data=body,
        content_type="application/json",
        HTTP_X_AGENT_ID=str(server.agent_id),
        HTTP_X_AGENT_TIMESTAMP=stamp,
        HTTP_X_AGENT_SIGNATURE=signature,
    )


def report(agent, **gpu) -> dict:
    server, _ = agent
    uuid = server.gpus.get().uuid
    return {"seq": 1, "sent_at": datetime.now(UTC).isoformat(), "gpus": [{"uuid": uuid, "utilization_pct": 5, **gpu}]}


@pytest.mark.parametrize("reason", ["hw\x00slowdown", "\ud800", "ok\udfffok"])
def test_a_report_with_a_throttle_reason_postgresql_cannot_store_is_400(agent, reason):
    # json.dumps writes the escapes (\u0000, \ud800): valid JSON, but no string PostgreSQL can store.
    error = assert_400(post_report(agent, report(agent, throttle_reasons=[reason])))
    assert "throttle_reasons" in error["message"]


def test_a_workload_message_with_a_lone_surrogate_is_kept_with_a_replacement_character(alice, box):
    lease = rent_with_workload(alice, gpu_count=1)
    wid = box.agent.desired()["workloads"][0]["id"]
    response = box.agent.report([{"id": wid, "state": "running", "message": "up\ud800 and\x00 running"}])
    assert response.status_code == 202, response.content
    shown = alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["workloads"][0]
    assert shown["message"] == "up\ufffd and running"


def test_a_report_sent_at_the_end_of_year_9999_west_of_utc_is_400(agent):
    body = report(agent)
    body["sent_at"] = "9999-12-31T23:59:59-14:00"
    assert_400(post_report(agent, body), "sent_at")


def test_a_report_sent_in_year_one_is_400(agent):
    body = report(agent)
    body["sent_at"] = "0001-01-01T00:00:00+14:00"
    assert_400(post_report(agent, body), "sent_at")


def test_a_report_of_deeply_nested_arrays_is_400(agent):
    server, _ = agent
    nested = b'{"seq": 1, "sent_at": "2026-01-01T00:00:00Z", "gpus": ' + b"[" * 6000 + b"]" * 6000 + b"}"
    error = assert_400(post_report(agent, nested))
    assert error["code"] == "malformed_request"
    body = report(agent)
    body["gpus"][0]["extra"] = json.loads("[" * 200 + "]" * 200)
    assert_400(post_report(agent, json.dumps(body).encode()))


def test_a_well_formed_report_is_still_accepted(agent):
    assert post_report(agent, report(agent, throttle_reasons=["hw_slowdown"])).status_code == 202


# --- months outside the platform's calendar --------------------------------------------------------------------


@pytest.mark.parametrize("period", ["0001-01", "9999-12", "0000-01", "2026-13"])
def test_reconciliation_of_a_month_outside_the_calendar_is_400(staff, period):
    assert_400(staff.api.get("/api/v1/admin/reconciliation/", {"period": period}), "period")


# --- ASCII digits only -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("price", ["１２.５０", "١٢.٥", "1_2.50", "１2.50"])
def test_a_price_in_non_ascii_digits_is_400(bob, price):
    server = online_server(organization=bob.org, offer=False)
    response = bob.api.post("/api/v1/offers/", {"server": server.pk, "prices": {"card_hour": price}}, format="json")
    assert_400(response, "card_hour")
    assert not Offer.objects.filter(server=server).exists()


def test_a_reprice_in_full_width_digits_is_400(bob):
    server = online_server(organization=bob.org)
    offer = Offer.objects.get(server=server)
    response = bob.api.patch(f"/api/v1/offers/{offer.pk}/", {"prices": {"card_hour": "１２.５０"}}, format="json")
    assert_400(response, "card_hour")


@pytest.mark.parametrize("count", ["２", "٢", "1_0", "２.0"])
def test_a_card_count_in_non_ascii_digits_is_400(alice, bob, count):
    online_server(organization=bob.org)
    assert_400(alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": count}, format="json"), "gpu_count")


def test_ascii_digit_strings_are_still_numbers(alice, bob):
    online_server(organization=bob.org)
    response = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": "2"}, format="json")
    assert response.status_code == 201, response.content


def test_a_query_parameter_in_full_width_digits_is_400(anon):
    assert_400(anon.get("/api/v1/offers/", {"min_gpus": "２"}), "min_gpus")
    assert_400(anon.get("/api/v1/offers/", {"max_price": "１.5"}), "max_price")
