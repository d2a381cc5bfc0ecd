"""`suanli logs LEASE [--workload W] [--tail N] [-f]` against the live site: the output the server's agent sent
(signed uploads of the workload tests' agent), the last N lines, `--json` checked against the schema, following
new output until the lease ends, and the exit codes of a lease without a workload and of another tenant's."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from tests.cli.conftest import assert_valid, response_schema
from tests.workloads.conftest import box, rent  # noqa: F401
from workloads.models import Workload


def rent_with_workload(persona, **body) -> dict:
    # An image, not a public template: an earlier live-server test's flush takes the migrations' templates.
    response = rent(persona, workload={"image": "ubuntu:24.04"}, **body)
    assert response.status_code == 201, response.content
    return response.json()


def upload(agent, wid: int, text: str, at: float) -> None:
    raw = json.dumps({"logs": [{"id": wid, "text": text, "captured_at": at}]}).encode()
    response = agent.client.post(
        "/api/v1/agent/workload-logs/", data=raw, content_type="application/json", **agent._signed(raw)
    )
    assert response.status_code == 200 and response.json() == {"stored": 1}, response.content


def test_logs_prints_the_last_lines_and_json_matches_the_schema(suanli, alice, box, openapi):  # noqa: F811
    suanli.login(alice)
    lease = rent_with_workload(alice, gpu_count=1)
    wid = Workload.objects.get(lease_id=lease["id"]).pk
    upload(box.agent, wid, "".join(f"step {i}\n" for i in range(1, 11)), 2_000_000_000)
    run = suanli.ok("logs", str(lease["id"]), "--tail", "3")
    assert run.out == "step 8\nstep 9\nstep 10\n"
    answer = suanli.ok("logs", str(lease["id"]), "--workload", str(wid), "--json").json()
    assert answer["lines"] == 10 and answer["workload"] == wid and answer["captured_at"].startswith("2033-05-18")
    assert_valid(answer, response_schema(openapi, "/api/v1/leases/{id}/workloads/{wid}/logs/"))


def test_a_lease_without_a_workload_or_another_tenants_lease(suanli, alice, charlie, box):  # noqa: F811
    plain = rent(alice, gpu_count=1)
    assert plain.status_code == 201, plain.content
    suanli.login(alice)
    run = suanli("logs", str(plain.json()["id"]))
    assert run.code == 1 and "no_workload" in run.err
    lease = rent_with_workload(alice, gpu_count=1)
    suanli.login(charlie)
    assert suanli("logs", str(lease["id"])).code == 3
    assert suanli("logs", str(lease["id"]), "--tail", "0").code == 2


def test_follow_prints_new_output_once_until_the_lease_ends(suanli, alice, box):  # noqa: F811
    suanli.login(alice)
    lease = rent_with_workload(alice, gpu_count=1)
    wid = Workload.objects.get(lease_id=lease["id"]).pk
    upload(box.agent, wid, "one\ntwo\n", 2_000_000_000)
    follower = subprocess.Popen(
        [sys.executable, "-m", "cli", "logs", str(lease["id"]), "-f", "--interval", "0.2"],
        cwd=suanli.home,
        env=suanli.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(2.5)
        upload(box.agent, wid, "one\ntwo\nthree\n", 2_000_000_030)
        time.sleep(1.5)
        upload(box.agent, wid, "two\nthree\nfour\n", 2_000_000_060)  # the tail moved on: only "four" is new
        time.sleep(1.5)
        assert alice.api.post(f"/api/v1/leases/{lease['id']}/end/").status_code == 200
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
    assert follower.returncode == 0, err
    assert out == "one\ntwo\nthree\nfour\n"


def test_following_prints_only_the_lines_a_later_tail_adds():
    from cli.customer import _new_output

    assert _new_output("", "a\n") == "a\n"
    assert _new_output("one\ntwo\n", "one\ntwo\nthree\n") == "three\n"
    assert _new_output("one\ntwo\nthree\n", "two\nthree\nfour\n") == "four\n"  # the tail moved on
    assert _new_output("a\nb\n", "c\nd\n") == "c\nd\n"  # no overlap: the output started again
    assert _new_output("x\nx\n", "x\nx\nx\n") == "x\n"
    assert _new_output("a\nb\n", "a\nb\n") == ""
