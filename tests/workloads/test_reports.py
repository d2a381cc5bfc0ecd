"""The workload part of agent reports: whatever an agent (or someone holding its secret) sends, the platform
answers 202 or 400, never 500, keeps what makes sense and stores nothing PostgreSQL cannot hold."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from tests.workloads.conftest import rent_with_workload


def raw_report(box, workloads_json: str):
    """A report whose `workloads` is sent exactly as written (JSON the agent's encoder would never produce)."""
    box.agent.seq += 1
    body = (
        f'{{"seq": {box.agent.seq}, "sent_at": "{datetime.now(UTC).isoformat()}", '
        f'"gpus": [{{"uuid": "{box.uuids[0]}"}}], "workloads": {workloads_json}}}'
    ).encode()
    return box.agent.client.post(
        "/api/v1/agent/reports/", data=body, content_type="application/json", **box.agent._signed(body)
    )


@pytest.fixture
def pending(alice, box) -> tuple[dict, int]:
    lease = rent_with_workload(alice, gpu_count=1)
    return lease, box.agent.desired()["workloads"][0]["id"]


def workload_of(alice, lease) -> dict:
    return alice.api.get(f"/api/v1/leases/{lease['id']}/").json()["workloads"][0]


@pytest.mark.parametrize("progress", ["1e999", "-1e999", "true", '"50"', "12.7"])
def test_a_progress_that_is_not_a_finite_number_is_dropped(alice, box, pending, progress):
    lease, wid = pending
    response = raw_report(box, f'[{{"id": {wid}, "state": "pulling", "progress": {progress}}}]')
    assert response.status_code == 202, response.content
    shown = workload_of(alice, lease)
    assert shown["state"] == "pulling"
    assert shown["progress"] == (12 if progress == "12.7" else None)


def test_ports_keep_only_sound_container_and_host_ports(alice, box, pending):
    lease, wid = pending
    ports = {"²": 40001, "0" * 5000 + "22": 40002, "0": 40003, "70000": 40004, "8888": 0, "8000": 1e999, "22": 40022}
    entry = {"id": wid, "state": "running", "ports": ports}
    response = raw_report(box, json.dumps([entry]).replace("Infinity", "1e999"))
    assert response.status_code == 202, response.content
    assert workload_of(alice, lease)["ports"] == {"22": 40022}


def test_a_message_with_nul_characters_is_kept_without_them(alice, box, pending):
    lease, wid = pending
    response = raw_report(box, f'[{{"id": {wid}, "state": "running", "message": "up\\u0000 and running"}}]')
    assert response.status_code == 202, response.content
    assert workload_of(alice, lease)["message"] == "up and running"
    events = alice.api.get(f"/api/v1/leases/{lease['id']}/events/").json()["results"]
    assert [e["data"]["message"] for e in events if e["kind"] == "workload"] == ["up and running"]


@pytest.mark.parametrize(
    "workloads",
    [
        '{"id": 1}',
        '[{"id": "1", "state": "running"}]',
        '[{"id": 1, "state": "sleeping"}]',
        "[5]",
        '[{"state": "running"}]',
    ],
)
def test_a_malformed_workloads_field_refuses_the_report_whole(alice, box, pending, workloads):
    lease, _ = pending
    response = raw_report(box, workloads)
    assert response.status_code == 400, response.content
    assert workload_of(alice, lease)["state"] == "pending"


@pytest.mark.parametrize("version", ["-1", "true", '"7"', "1.5", str(2**63)])
def test_a_bad_workloads_version_refuses_the_report(box, pending, version):
    box.agent.seq += 1
    body = (
        f'{{"seq": {box.agent.seq}, "sent_at": "{datetime.now(UTC).isoformat()}", '
        f'"gpus": [{{"uuid": "{box.uuids[0]}"}}], "workloads_version": {version}}}'
    ).encode()
    response = box.agent.client.post(
        "/api/v1/agent/reports/", data=body, content_type="application/json", **box.agent._signed(body)
    )
    assert response.status_code == 400, response.content


def test_unknown_and_out_of_range_ids_are_ignored(alice, box, pending):
    lease, wid = pending
    response = raw_report(box, f'[{{"id": {2**70}, "state": "failed"}}, {{"id": -5, "state": "failed"}}]')
    assert response.status_code == 202
    assert workload_of(alice, lease)["state"] == "pending"
