"""POST /api/v1/leases/ with a workload, the agent's signed read of its server's desired state (API.md, Agent side;
notes/workloads-contract.md), and what reported states show the customer."""

from __future__ import annotations

from datetime import datetime, timedelta

import time_machine
from django.utils import timezone

from tests.workloads.conftest import PUBLIC_HOST, add_key, enrolled_box, rent, rent_with_workload, template_id
from workloads.models import Template


def lease_of(persona, lease_id: int) -> dict:
    response = persona.api.get(f"/api/v1/leases/{lease_id}/")
    assert response.status_code == 200, response.content
    return response.json()


def test_a_lease_with_a_workload_gets_one_pending_workload_on_its_server(alice, box):
    key = add_key(alice)
    lease = rent_with_workload(alice, template="pytorch-jupyter", keys=[key["id"]], gpu_count=4, offer=box.offer_id)
    assert lease["state"] == "active" and len(lease["gpus"]) == 4
    assert lease["workload"]["template"] == template_id("pytorch-jupyter")
    assert lease["workload"]["access"] == "container" and lease["workload"]["ports"] == [22, 8888]
    assert lease["workload"]["ssh_keys"] == [{"name": key["name"], "fingerprint": key["fingerprint"]}]
    [workload] = lease["workloads"]
    assert workload["server"] == box.server_id and workload["state"] == "pending"
    assert workload["started_at"] is None and workload["connect"] == []
    assert lease_of(alice, lease["id"])["workloads"] == lease["workloads"]


def test_a_lease_without_a_workload_carries_none(alice, box):
    response = rent(alice, gpu_count=2)
    assert response.status_code == 201
    assert response.json()["workload"] is None and response.json()["workloads"] == []
    assert box.agent.desired()["workloads"] == []


def test_the_agent_is_told_exactly_the_leases_cards_image_ports_keys_limits_and_stop_by(alice, box):
    key = add_key(alice)
    end_at = (timezone.now() + timedelta(hours=5)).replace(microsecond=0)
    lease = rent_with_workload(
        alice, template="pytorch-jupyter", keys=[key["id"]], gpu_count=4, end_at=end_at.isoformat()
    )
    desired = box.agent.desired()
    assert desired["server"] == box.server_id and desired["public_host"] == PUBLIC_HOST
    assert desired["port_range"] == [40000, 40999] and desired["version"] >= 1
    [item] = desired["workloads"]
    template = Template.objects.get(slug="pytorch-jupyter", organization=None)
    assert item["id"] == lease["workloads"][0]["id"] and item["lease"] == lease["id"]
    assert sorted(item["gpus"]) == sorted(g["uuid"] for g in lease["gpus"])
    assert set(item["gpus"]) <= set(box.uuids) and len(item["gpus"]) == 4
    assert item["image"] == template.image and item["command"] == template.command
    assert item["ports"] == [22, 8888] and item["ssh_keys"] == [key["public_key"]]
    assert item["access"] == "container" and item["user"] == "root"
    assert item["desired"] == "running" and item["generation"] == 0
    # Half of the server's 128 cores and 1024 GB for half of its cards; the template's disk.
    assert item["limits"] == {"cpus": 64.0, "memory_mb": 512 * 1024, "disk_gb": 50}
    assert datetime.fromisoformat(item["stop_by"]) == end_at
    assert item["env"]["JUPYTER_TOKEN"] and "NVIDIA_VISIBLE_DEVICES" not in item["env"]


def test_the_version_stays_on_a_repeated_read_and_goes_up_with_each_change(alice, box):
    lease = rent_with_workload(alice, gpu_count=2)
    wid = lease["workloads"][0]["id"]
    first = box.agent.desired()
    assert box.agent.desired() == first

    def changed(previous: dict) -> dict:
        now = box.agent.desired()
        assert now["version"] > previous["version"], (previous, now)
        assert box.agent.desired()["version"] == now["version"]
        return now

    assert alice.api.post(f"/api/v1/leases/{lease['id']}/resize/", {"gpu_count": 3}, format="json").status_code == 200
    resized = changed(first)
    assert len(resized["workloads"][0]["gpus"]) == 3
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/workloads/{wid}/stop/").status_code == 200
    stopped = changed(resized)
    assert stopped["workloads"][0]["desired"] == "stopped"
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/workloads/{wid}/restart/").status_code == 200
    restarted = changed(stopped)
    assert restarted["workloads"][0]["desired"] == "running" and restarted["workloads"][0]["generation"] == 1
    assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200
    ended = changed(restarted)
    assert ended["workloads"] == []


def test_two_customers_on_one_server_get_their_own_workloads_on_disjoint_cards(alice, charlie, box):
    alices = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=4)
    charlies = rent_with_workload(charlie, template="vllm", keys=[add_key(charlie)["id"]], gpu_count=4)
    assert {g["server"] for g in alices["gpus"] + charlies["gpus"]} == {box.server_id}
    items = {item["lease"]: item for item in box.agent.desired()["workloads"]}
    assert set(items) == {alices["id"], charlies["id"]}
    assert set(items[alices["id"]]["gpus"]).isdisjoint(items[charlies["id"]]["gpus"])
    assert set(items[alices["id"]]["gpus"]) | set(items[charlies["id"]]["gpus"]) == set(box.uuids)
    assert items[alices["id"]]["id"] != items[charlies["id"]]["id"]
    assert items[charlies["id"]]["env"]["MODEL"] == "Qwen/Qwen2.5-7B-Instruct"
    assert items[alices["id"]]["ssh_keys"] != items[charlies["id"]]["ssh_keys"]
    # Neither sees the other's workload on its lease.
    assert [w["id"] for w in lease_of(alice, alices["id"])["workloads"]] == [items[alices["id"]]["id"]]
    assert alice.api.get(f"/api/v1/leases/{charlies['id']}/").status_code == 404


def test_a_running_report_shows_the_state_when_it_started_and_the_ssh_line(alice, box):
    lease = rent_with_workload(alice, keys=[add_key(alice)["id"]], gpu_count=1)
    wid = box.agent.desired()["workloads"][0]["id"]
    box.agent.report([{"id": wid, "state": "pulling", "progress": 40, "message": "pulling 40%"}])
    pulling = lease_of(alice, lease["id"])["workloads"][0]
    assert pulling["state"] == "pulling" and pulling["progress"] == 40 and pulling["message"] == "pulling 40%"
    assert pulling["started_at"] is None and pulling["connect"] == []
    before = timezone.now()
    box.agent.report([{"id": wid, "state": "running", "ports": {"22": 40022}}])
    running = lease_of(alice, lease["id"])["workloads"][0]
    assert running["state"] == "running" and running["ports"] == {"22": 40022}
    assert datetime.fromisoformat(running["started_at"]) >= before - timedelta(seconds=1)
    [ssh] = running["connect"]
    assert ssh["kind"] == "ssh" and ssh["host"] == PUBLIC_HOST and ssh["port"] == 40022 and ssh["user"] == "root"
    assert ssh["command"] == f"ssh -p 40022 root@{PUBLIC_HOST}"
    # A later running report keeps the first start.
    box.agent.report([{"id": wid, "state": "running", "ports": {"22": 40022}}])
    assert lease_of(alice, lease["id"])["workloads"][0]["started_at"] == running["started_at"]
    events = alice.api.get(f"/api/v1/leases/{lease['id']}/events/").json()
    states = [e["data"].get("state") for e in events["results"] if e["kind"] == "workload"]
    assert states == ["pulling", "running"]


def test_the_pytorch_template_shows_a_notebook_url_with_its_token(alice, box):
    lease = rent_with_workload(alice, template="pytorch-jupyter", keys=[add_key(alice)["id"]], gpu_count=1)
    [item] = box.agent.desired()["workloads"]
    token = item["env"]["JUPYTER_TOKEN"]
    assert len(token) >= 24
    box.agent.report([{"id": item["id"], "state": "running", "ports": {"22": 40022, "8888": 40023}}])
    connect = {c["kind"]: c for c in lease_of(alice, lease["id"])["workloads"][0]["connect"]}
    assert connect["ssh"]["command"] == f"ssh -p 40022 root@{PUBLIC_HOST}"
    assert connect["http"]["url"] == f"http://{PUBLIC_HOST}:40023/lab?token={token}"
    assert connect["http"]["container_port"] == 8888
    # The token is the customer's alone: another lease gets another one.
    other = rent_with_workload(alice, template="pytorch-jupyter", gpu_count=1)
    tokens = {i["lease"]: i["env"]["JUPYTER_TOKEN"] for i in box.agent.desired()["workloads"]}
    assert tokens[other["id"]] != token


def test_an_agent_cannot_report_or_read_another_servers_workloads(alice, charlie, bob, h100, box):
    other_box = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    charlies = rent_with_workload(charlie, gpu_count=1, server=other_box.server_id)
    theirs = charlies["workloads"][0]["id"]
    alices = rent_with_workload(alice, gpu_count=1, server=box.server_id)
    mine = alices["workloads"][0]["id"]
    assert [w["id"] for w in box.agent.desired()["workloads"]] == [mine]
    assert [w["id"] for w in other_box.agent.desired()["workloads"]] == [theirs]
    box.agent.report(
        [
            {"id": theirs, "state": "failed", "message": "spoofed"},
            {"id": mine, "state": "running", "ports": {"22": 40022}},
            {"id": 987654321, "state": "running"},
        ]
    )
    untouched = lease_of(charlie, charlies["id"])
    assert untouched["state"] == "active" and untouched["workloads"][0]["state"] == "pending"
    assert untouched["workloads"][0]["message"] == ""
    assert lease_of(alice, alices["id"])["workloads"][0]["state"] == "running"


def test_the_desired_state_needs_the_agents_signature(alice, box, anon):
    rent_with_workload(alice, gpu_count=1)
    assert anon.get("/api/v1/agent/workloads/").status_code == 401
    assert alice.api.get("/api/v1/agent/workloads/").status_code == 401
    box.agent.secret = "not-the-secret"
    response = box.agent.get_desired()
    assert response.status_code == 401 and "GPU-" not in response.content.decode()


def test_a_retried_create_with_the_same_idempotency_key_makes_one_lease_and_one_workload(alice, box):
    body = {"plan": "card_hour", "gpu_count": 2, "workload": {"template": template_id("cuda-ssh")}}
    first = alice.api.post("/api/v1/leases/", body, format="json", HTTP_IDEMPOTENCY_KEY="rent-1")
    again = alice.api.post("/api/v1/leases/", body, format="json", HTTP_IDEMPOTENCY_KEY="rent-1")
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["workloads"] == again.json()["workloads"]
    assert len(box.agent.desired()["workloads"]) == 1


def test_a_key_removed_from_the_account_keeps_working_for_the_lease_made_with_it(alice, box):
    key = add_key(alice)
    lease = rent_with_workload(alice, keys=[key["id"]], gpu_count=1)
    assert alice.api.delete(f"/api/v1/ssh-keys/{key['id']}/").status_code == 204
    assert box.agent.desired()["workloads"][0]["ssh_keys"] == [key["public_key"]]
    assert lease_of(alice, lease["id"])["workload"]["ssh_keys"][0]["fingerprint"] == key["fingerprint"]
    # A new lease cannot name it any more.
    response = rent(alice, gpu_count=1, workload={"template": template_id("cuda-ssh"), "ssh_keys": [key["id"]]})
    assert response.status_code == 400 and "ssh_keys" in response.json()["error"]["fields"]["workload"]


def test_a_reservations_workload_is_asked_for_when_it_starts(alice, box):
    from scheduler.lifecycle import leases_run
    from workloads.checks import workloads_check

    now = timezone.now()
    start, end = now + timedelta(hours=1), now + timedelta(hours=3)
    lease = rent_with_workload(alice, gpu_count=2, start_at=start.isoformat(), end_at=end.isoformat())
    assert lease["state"] == "scheduled" and lease["workloads"][0]["state"] == "pending"
    assert box.agent.desired()["workloads"] == []
    with time_machine.travel(start + timedelta(minutes=1), tick=False):
        leases_run()
        [item] = box.agent.desired()["workloads"]
        assert item["lease"] == lease["id"] and len(item["gpus"]) == 2
        assert workloads_check()["failed"] == 0  # the start timeout counts from the start, not from the booking
