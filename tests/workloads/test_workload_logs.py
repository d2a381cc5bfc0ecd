"""A workload's output (workloads/workload_logs.py, agents/workload_logs.py): the agent's signed upload of each
workload's tail, kept per workload (the latest only, its own server's workloads only, at most 64 KiB), and
`GET /api/v1/leases/{id}/workloads/{wid}/logs/?tail=N` for the lease's organisation. The agent's shipper is run
for real against the live platform with a runtime that holds the output in memory."""

from __future__ import annotations

import json

import pytest

from agents.client import Client as AgentClient
from agents.workload_logs import LOG_TAIL_BYTES, LogShipper, decode_tail
from tests.workloads.conftest import enrolled_box, rent_with_workload
from workloads.models import Workload, WorkloadLog


def upload(agent, *entries: dict):
    raw = json.dumps({"logs": list(entries)}).encode()
    return agent.client.post(
        "/api/v1/agent/workload-logs/", data=raw, content_type="application/json", **agent._signed(raw)
    )


@pytest.fixture
def rented(alice, box) -> tuple[dict, int]:
    # An image of its own rather than a public template: a live_server test runs on a flushed database, which has
    # lost the templates the migrations load.
    lease = rent_with_workload(alice, gpu_count=1, workload={"image": "example/trainer:1"})
    return lease, Workload.objects.get(lease_id=lease["id"]).pk


def logs_url(lease: dict, wid: int) -> str:
    return f"/api/v1/leases/{lease['id']}/workloads/{wid}/logs/"


def test_before_any_output_the_answer_is_empty_with_no_time(alice, rented):
    lease, wid = rented
    body = alice.api.get(logs_url(lease, wid)).json()
    assert body["text"] == "" and body["lines"] == 0 and body["captured_at"] is None
    assert body["workload"] == wid and body["truncated"] is False


def test_the_agents_tail_is_served_to_the_lease_with_its_time_and_the_last_n_lines(alice, box, rented):
    lease, wid = rented
    text = "".join(f"step {i}\n" for i in range(1, 301))
    response = upload(box.agent, {"id": wid, "text": text, "truncated": False, "captured_at": 1_790_000_000.25})
    assert response.status_code == 200, response.content
    assert response.json() == {"stored": 1}
    body = alice.api.get(logs_url(lease, wid)).json()
    assert body["text"] == "".join(f"step {i}\n" for i in range(101, 301))  # 200 lines by default
    assert body["lines"] == 200 and body["truncated"] is True
    assert body["captured_at"].startswith("2026-09-21T") and body["received_at"]
    five = alice.api.get(logs_url(lease, wid), {"tail": 5}).json()
    assert five["text"] == "step 296\nstep 297\nstep 298\nstep 299\nstep 300\n" and five["lines"] == 5
    whole = alice.api.get(logs_url(lease, wid), {"tail": 10000}).json()
    assert whole["text"] == text and whole["truncated"] is False


def test_a_newer_tail_replaces_the_kept_one_and_an_older_one_changes_nothing(alice, box, rented):
    lease, wid = rented
    assert upload(box.agent, {"id": wid, "text": "new\n", "captured_at": 2_000_000_000}).json() == {"stored": 1}
    assert upload(box.agent, {"id": wid, "text": "late retry\n", "captured_at": 1_999_999_000}).json() == {"stored": 0}
    assert alice.api.get(logs_url(lease, wid)).json()["text"] == "new\n"
    assert WorkloadLog.objects.count() == 1


def test_an_agent_writes_only_its_own_servers_workloads(alice, bob, box, h100, rented):
    lease, wid = rented
    other = enrolled_box(bob, h100, name="box-2", prefix="b0x2")
    response = upload(other.agent, {"id": wid, "text": "forged\n", "captured_at": 2_000_000_000})
    assert response.status_code == 200 and response.json() == {"stored": 0}
    assert upload(other.agent, {"id": 2**31 - 7, "text": "x", "captured_at": 2e9}).json() == {"stored": 0}
    assert not WorkloadLog.objects.exists()
    unsigned = box.agent.client.post(
        "/api/v1/agent/workload-logs/", data=b'{"logs": []}', content_type="application/json"
    )
    assert unsigned.status_code == 401


def test_the_platform_keeps_at_most_64_kib_and_cleans_what_it_cannot_store(alice, box, rented):
    lease, wid = rented
    text = "".join(f"line {i} \u7b97\u529b\n" for i in range(20_000)) + "bad \x00 \ud800 end\n"
    assert upload(box.agent, {"id": wid, "text": text, "captured_at": 2e9}).status_code == 200
    kept = WorkloadLog.objects.get()
    assert len(kept.text.encode()) <= LOG_TAIL_BYTES and kept.truncated
    assert kept.text.endswith("bad  \ufffd end\n") and kept.text.startswith("line ")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"logs": "x"},
        {"logs": [{"id": "1", "text": "x", "captured_at": 1}]},
        {"logs": [{"id": 1, "text": 5, "captured_at": 1}]},
        {"logs": [{"id": 1, "text": "x"}]},
        {"logs": [{"id": 1, "text": "x", "captured_at": 10**20}]},
        {"logs": [{"id": i, "text": "", "captured_at": 1} for i in range(1, 100)]},
    ],
)
def test_a_malformed_upload_is_a_400(box, body):
    raw = json.dumps(body).encode()
    agent = box.agent
    response = agent.client.post(
        "/api/v1/agent/workload-logs/", data=raw, content_type="application/json", **agent._signed(raw)
    )
    assert response.status_code == 400 and response.json()["error"]["code"]


def test_tail_must_be_a_line_count(alice, rented):
    lease, wid = rented
    for bad in ("0", "-1", "abc", "10001", "\uff11"):
        response = alice.api.get(logs_url(lease, wid), {"tail": bad})
        assert response.status_code == 400 and "tail" in response.json()["error"]["fields"], bad


def test_another_tenant_and_another_leases_workload_are_404(alice, charlie, box, rented):
    lease, wid = rented
    upload(box.agent, {"id": wid, "text": "alice's secret output\n", "captured_at": 2e9})
    missing = charlie.api.get(f"/api/v1/leases/{2**31 - 7}/workloads/{wid}/logs/")
    theirs = charlie.api.get(logs_url(lease, wid))
    assert theirs.status_code == 404 and theirs.json() == missing.json()
    other = rent_with_workload(alice, gpu_count=1)
    assert alice.api.get(logs_url(other, wid)).status_code == 404
    assert b"secret" not in theirs.content


class MemoryRuntime:
    """A runtime whose workloads' output is held in memory (the agent's Docker runtime reads Docker's)."""

    def __init__(self):
        self.output: dict[int, bytes] = {}

    def logs(self, workload_id: int, limit: int) -> bytes | None:
        data = self.output.get(workload_id)
        return None if data is None else data[-limit:]


def test_the_agents_shipper_sends_changed_tails_only_through_the_live_platform(live_server, alice, box, rented):
    lease, wid = rented
    runtime = MemoryRuntime()
    client = AgentClient(live_server.url, box.agent.agent_id, box.agent.secret)
    now = [1000.0]
    shipper = LogShipper(client, runtime, every=30, clock=lambda: now[0])
    runtime.output[wid] = b"loading model\n"
    runtime.output[wid + 1000] = b"not a workload of this server\n"
    assert shipper.ship([wid, wid + 1000]) == 2  # the platform takes the upload; it keeps only its own workload's
    assert alice.api.get(logs_url(lease, wid)).json()["text"] == "loading model\n"
    runtime.output[wid] += b"epoch 1 loss 0.5\n"
    assert shipper.ship([wid]) == 0  # not due yet
    now[0] += 30
    assert shipper.ship([wid]) == 1
    assert alice.api.get(logs_url(lease, wid)).json()["text"] == "loading model\nepoch 1 loss 0.5\n"
    now[0] += 30
    received = WorkloadLog.objects.get().received_at
    assert shipper.ship([wid]) == 0  # unchanged: nothing sent
    assert WorkloadLog.objects.get().received_at == received
    now[0] += 30
    runtime.output[wid] = b"x" * (LOG_TAIL_BYTES * 2)
    assert shipper.ship([wid]) == 1
    body = alice.api.get(logs_url(lease, wid)).json()
    assert body["truncated"] is True and len(body["text"]) == LOG_TAIL_BYTES


def test_a_refused_or_unreachable_upload_is_tried_again_at_the_next_turn(alice, box, rented):
    lease, wid = rented
    runtime = MemoryRuntime()
    runtime.output[wid] = b"hello\n"
    now = [0.0]
    dead = AgentClient("http://127.0.0.1:9", box.agent.agent_id, box.agent.secret, timeout=2)
    shipper = LogShipper(dead, runtime, every=5, clock=lambda: now[0])
    assert shipper.ship([wid]) == 0 and shipper.sent == {}
    now[0] += 5
    assert shipper.due()


def test_decode_tail_cuts_at_a_character_and_a_line():
    data = ("a\n" + "\u7b97" * 50 + "\nlast line\n").encode()
    text, cut = decode_tail(data, limit=20)
    assert cut and text == "last line\n"
    assert decode_tail(b"short\n") == ("short\n", False)
    text, cut = decode_tail(b"\xff\xfeok\n")
    assert text == "\ufffd\ufffdok\n" and not cut
