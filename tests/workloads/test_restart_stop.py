"""POST /api/v1/leases/{id}/workloads/{wid}/restart/ and .../stop/: act on a workload without ending the lease."""

from __future__ import annotations

from tests.conftest import make_persona
from tests.workloads.conftest import rent_with_workload


def verb(persona, lease_id, wid, name: str, **headers):
    return persona.api.post(f"/api/v1/leases/{lease_id}/workloads/{wid}/{name}/", **headers)


def test_restart_bumps_the_generation_and_stop_asks_for_a_stopped_workload(alice, box):
    lease = rent_with_workload(alice, gpu_count=2)
    wid = lease["workloads"][0]["id"]
    stopped = verb(alice, lease["id"], wid, "stop")
    assert stopped.status_code == 200, stopped.content
    assert stopped.json()["state"] == "active" and len(stopped.json()["gpus"]) == 2
    assert stopped.json()["workloads"][0]["desired"] == "stopped"
    assert box.agent.desired()["workloads"][0]["desired"] == "stopped"
    assert verb(alice, lease["id"], wid, "stop").json()["workloads"][0]["desired"] == "stopped"  # idempotent

    restarted = verb(alice, lease["id"], wid, "restart")
    assert restarted.status_code == 200
    assert restarted.json()["workloads"][0]["desired"] == "running"
    assert restarted.json()["workloads"][0]["generation"] == 1
    assert verb(alice, lease["id"], wid, "restart").json()["workloads"][0]["generation"] == 2
    item = box.agent.desired()["workloads"][0]
    assert item["desired"] == "running" and item["generation"] == 2
    events = alice.api.get(f"/api/v1/leases/{lease['id']}/events/").json()["results"]
    actions = [e["data"].get("action") for e in events]
    assert actions.count("restart") == 2 and actions.count("stop") == 1


def test_a_retried_restart_with_the_same_idempotency_key_restarts_once(alice, box):
    lease = rent_with_workload(alice, gpu_count=1)
    wid = lease["workloads"][0]["id"]
    first = verb(alice, lease["id"], wid, "restart", HTTP_IDEMPOTENCY_KEY="restart-1")
    again = verb(alice, lease["id"], wid, "restart", HTTP_IDEMPOTENCY_KEY="restart-1")
    assert first.json() == again.json() and again.json()["workloads"][0]["generation"] == 1


def test_another_tenants_lease_or_workload_is_404(alice, charlie, box):
    alices = rent_with_workload(alice, gpu_count=1)
    charlies = rent_with_workload(charlie, gpu_count=1)
    mine, theirs = alices["workloads"][0]["id"], charlies["workloads"][0]["id"]
    for name in ("restart", "stop"):
        response = verb(charlie, alices["id"], mine, name)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert "alice" not in response.content.decode().lower()
        # Charlie's own lease with alice's workload id, and alice's lease with charlie's workload id.
        assert verb(charlie, charlies["id"], mine, name).status_code == 404
        assert verb(alice, alices["id"], theirs, name).status_code == 404
        assert verb(alice, alices["id"], "nonsense", name).status_code == 404
    for item in box.agent.desired()["workloads"]:
        assert item["generation"] == 0 and item["desired"] == "running"


def test_an_ended_lease_is_a_conflict(alice, box):
    lease = rent_with_workload(alice, gpu_count=1)
    wid = lease["workloads"][0]["id"]
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200
    for name in ("restart", "stop"):
        response = verb(alice, lease["id"], wid, name)
        assert response.status_code == 409 and response.json()["error"]["code"] == "invalid_state"


def test_a_billing_member_cannot_restart_or_stop(alice, box):
    lease = rent_with_workload(alice, gpu_count=1)
    wid = lease["workloads"][0]["id"]
    billing = make_persona(alice.org, role="billing")
    for name in ("restart", "stop"):
        assert verb(billing, lease["id"], wid, name).status_code == 403
    assert box.agent.desired()["workloads"][0]["generation"] == 0
