"""Provider servers over the API: register, list, detail, enrolment tokens, drain; tenancy and bad input."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
import time_machine
from django.conf import settings
from django.utils import timezone

from accounts.models import Organization, Role
from inventory.models import GpuModel, Server
from tests.conftest import make_persona
from tests.factories import GpuFactory, ServerFactory


@pytest.fixture
def h100(db) -> GpuModel:
    return GpuModel.objects.get(slug="h100-sxm5-80gb")


def body(model: GpuModel, **overrides) -> dict:
    data = {
        "name": "sh-node-01",
        "region": "cn-east-1",
        "site": "Shanghai DC 2, hall B",
        "gpu_model": model.pk,
        "gpu_count": 8,
        "cpu_cores": 128,
        "ram_gb": 2048,
        "disk_gb": 30000,
    }
    data.update(overrides)
    return data


def test_a_provider_registers_a_server_and_gets_a_one_time_enrollment_token(bob, h100):
    response = bob.api.post("/api/v1/servers/", body(h100), format="json")
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["status"] == "pending_enrollment"
    assert data["enrollment_token"].startswith("enr_")
    assert data["interconnect"] == "nvlink"  # the model's, by default
    assert data["network_gbps"] == 25
    assert data["gpus"] == []
    server = Server.objects.get(pk=data["id"])
    assert server.organization == bob.org
    assert server.enrollment_token_hash == hashlib.sha256(data["enrollment_token"].encode()).hexdigest()
    assert data["enrollment_token"] not in str(Server.objects.filter(pk=server.pk).values().first())
    ttl = settings.SUANLI_ENROLLMENT_TOKEN_TTL_HOURS * 3600
    assert abs((server.enrollment_expires_at - timezone.now()).total_seconds() - ttl) < 60


def test_the_enrollment_token_never_appears_in_list_or_detail_responses(bob, h100):
    token = bob.api.post("/api/v1/servers/", body(h100), format="json").json()["enrollment_token"]
    server = Server.objects.get(organization=bob.org)
    for url in ("/api/v1/servers/", f"/api/v1/servers/{server.pk}/"):
        text = bob.api.get(url).content.decode()
        assert token not in text
        assert server.enrollment_token_hash not in text
        assert "enrollment_token" not in text.replace("enrollment_expires_at", "")


def test_interconnect_and_network_can_be_given_explicitly(bob, h100):
    response = bob.api.post("/api/v1/servers/", body(h100, interconnect="pcie", network_gbps=400), format="json")
    assert response.status_code == 201
    assert response.json()["interconnect"] == "pcie"
    assert response.json()["network_gbps"] == 400


def test_a_pending_provider_may_register_servers(db, h100):
    pending = make_persona(Organization.objects.create(name="New IDC", kind="provider", status="pending"))
    response = pending.api.post("/api/v1/servers/", body(h100), format="json")
    assert response.status_code == 201


def test_a_member_of_the_provider_may_register_but_billing_may_not(bob, h100):
    member = make_persona(bob.org, role=Role.MEMBER)
    assert member.api.post("/api/v1/servers/", body(h100, name="m-1"), format="json").status_code == 201
    billing = make_persona(bob.org, role=Role.BILLING)
    response = billing.api.post("/api/v1/servers/", body(h100, name="b-1"), format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert not Server.objects.filter(name="b-1").exists()


def test_a_customer_organization_gets_403_registering_a_server(alice, h100):
    response = alice.api.post("/api/v1/servers/", body(h100), format="json")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "forbidden"
    assert Server.objects.count() == 0


def test_anonymous_callers_get_401_on_servers(anon, h100):
    assert anon.get("/api/v1/servers/").status_code == 401
    assert anon.post("/api/v1/servers/", body(h100), format="json").status_code == 401


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"gpu_count": 0}, "gpu_count"),
        ({"gpu_count": 17}, "gpu_count"),
        ({"gpu_count": "eight"}, "gpu_count"),
        ({"gpu_model": 999999}, "gpu_model"),
        ({"gpu_model": "h100"}, "gpu_model"),
        ({"cpu_cores": 10**30}, "cpu_cores"),
        ({"ram_gb": -1}, "ram_gb"),
        ({"disk_gb": 2**63}, "disk_gb"),
        ({"network_gbps": 10**12}, "network_gbps"),
        ({"name": ""}, "name"),
        ({"name": "x" * 101}, "name"),
        ({"name": "<script>"}, "name"),
        ({"region": "CN East!"}, "region"),
        ({"interconnect": "carrier-pigeon"}, "interconnect"),
        ({"owner": 1}, "owner"),
    ],
)
def test_bad_input_is_400_with_the_field_and_creates_nothing(bob, h100, overrides, field):
    response = bob.api.post("/api/v1/servers/", body(h100, **overrides), format="json")
    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"]
    assert Server.objects.count() == 0


def test_missing_fields_are_each_reported(bob):
    response = bob.api.post("/api/v1/servers/", {}, format="json")
    assert response.status_code == 400
    fields = response.json()["error"]["fields"]
    assert {"name", "region", "gpu_model", "gpu_count", "cpu_cores", "ram_gb", "disk_gb"} <= set(fields)


def test_a_duplicate_name_in_the_organization_is_a_field_error(bob, charlie, h100):
    assert bob.api.post("/api/v1/servers/", body(h100), format="json").status_code == 201
    response = bob.api.post("/api/v1/servers/", body(h100), format="json")
    assert response.status_code == 400
    assert "name" in response.json()["error"]["fields"]
    assert Server.objects.filter(organization=bob.org).count() == 1
    # Another organisation may use the same name.
    assert charlie.api.post("/api/v1/servers/", body(h100), format="json").status_code == 201


def test_a_provider_lists_only_its_own_servers(bob, charlie, h100):
    ServerFactory(organization=bob.org, name="bob-1", gpu_model=h100)
    ServerFactory(organization=bob.org, name="bob-2", gpu_model=h100)
    ServerFactory(organization=charlie.org, name="charlie-1", gpu_model=h100)
    response = bob.api.get("/api/v1/servers/")
    assert response.status_code == 200
    names = [s["name"] for s in response.json()["results"]]
    assert names == ["bob-1", "bob-2"]
    assert response.json()["count"] == 2


def test_server_detail_shows_its_gpus_with_health_and_allocation(bob, h100):
    server = ServerFactory(organization=bob.org, gpu_model=h100)
    GpuFactory(server=server, index=1, uuid="GPU-b", health="degraded", health_reason="ECC SBE rate")
    GpuFactory(server=server, index=0, uuid="GPU-a")
    response = bob.api.get(f"/api/v1/servers/{server.pk}/")
    assert response.status_code == 200
    gpus = response.json()["gpus"]
    assert [(g["index"], g["uuid"], g["health"]) for g in gpus] == [(0, "GPU-a", "healthy"), (1, "GPU-b", "degraded")]
    assert gpus[1]["health_reason"] == "ECC SBE rate"
    assert all(g["allocated"] is False for g in gpus)


def test_drain_and_undrain_are_idempotent(bob, h100):
    server = ServerFactory(organization=bob.org, gpu_model=h100)
    first = bob.api.post(f"/api/v1/servers/{server.pk}/drain/", {"reason": "PSU swap"}, format="json")
    assert first.status_code == 200
    assert first.json()["drained"] is True
    assert first.json()["drained_reason"] == "PSU swap"
    again = bob.api.post(f"/api/v1/servers/{server.pk}/drain/", {}, format="json")
    assert again.status_code == 200
    assert again.json()["drained_at"] == first.json()["drained_at"]
    assert again.json()["drained_reason"] == "PSU swap"
    for _ in range(2):
        response = bob.api.post(f"/api/v1/servers/{server.pk}/undrain/")
        assert response.status_code == 200
        assert response.json()["drained"] is False
    server.refresh_from_db()
    assert (server.drained, server.drained_reason, server.drained_at) == (False, "", None)


def test_a_customer_cannot_drain(alice, bob, h100):
    server = ServerFactory(organization=bob.org, gpu_model=h100)
    assert alice.api.post(f"/api/v1/servers/{server.pk}/drain/").status_code in (403, 404)
    server.refresh_from_db()
    assert server.drained is False


def test_a_new_enrollment_token_replaces_the_old_one(bob, h100):
    created = bob.api.post("/api/v1/servers/", body(h100), format="json").json()
    old_hash = Server.objects.get(pk=created["id"]).enrollment_token_hash
    with time_machine.travel(timezone.now() + timedelta(hours=1)):
        response = bob.api.post(f"/api/v1/servers/{created['id']}/enrollment-token/")
    assert response.status_code == 200
    token = response.json()["enrollment_token"]
    assert token != created["enrollment_token"]
    server = Server.objects.get(pk=created["id"])
    assert server.enrollment_token_hash == hashlib.sha256(token.encode()).hexdigest() != old_hash
    assert response.json()["enrollment_expires_at"] > created["enrollment_expires_at"]


def test_a_retired_server_gets_no_new_enrollment_token(bob, h100):
    server = ServerFactory(organization=bob.org, gpu_model=h100, enrolled_at=timezone.now(), status="retired")
    response = bob.api.post(f"/api/v1/servers/{server.pk}/enrollment-token/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"
    server.refresh_from_db()
    assert server.enrollment_token_hash == ""


def _state(server: Server) -> dict:
    return Server.objects.filter(pk=server.pk).values().get()


@pytest.mark.parametrize(
    ("method", "suffix"),
    [("get", ""), ("post", "drain/"), ("post", "undrain/"), ("post", "enrollment-token/")],
)
def test_another_tenants_server_is_404_with_no_data_and_no_change(bob, charlie, h100, method, suffix):
    server = ServerFactory(organization=bob.org, name="bob-secret-box", gpu_model=h100, drained=(suffix == "undrain/"))
    before = _state(server)
    response = getattr(charlie.api, method)(f"/api/v1/servers/{server.pk}/{suffix}", {}, format="json")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    assert "bob-secret-box" not in response.content.decode()
    assert _state(server) == before


def test_an_unknown_or_malformed_server_id_is_404(bob):
    assert bob.api.get("/api/v1/servers/999999/").status_code == 404
    assert bob.api.get("/api/v1/servers/abc/").status_code == 404
