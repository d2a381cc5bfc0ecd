"""Agent enrolment and signed reports, from the platform's side (API.md, Agent)."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.db import connection
from rest_framework.test import APIClient

from inventory import telemetry
from inventory.models import Gpu, GpuHealthEvent, Server
from inventory.services import server_register
from tests.support.agent_reports import Agent, cards, enroll, sample_rows


def test_enrolment_registers_the_cards_and_returns_credentials_once(registered):
    server, token = registered
    response = enroll(token)
    assert response.status_code == 201
    body = response.json()
    assert body["server"] == server.pk and body["agent_secret"]
    server.refresh_from_db()
    assert server.status == "online" and server.hostname == "gpu-host-1"
    assert body["agent_secret"] not in server.agent_secret_sealed
    assert Gpu.objects.filter(server=server).count() == 8
    again = enroll(token)
    assert again.status_code == 403
    assert again.json()["error"]["code"] == "enrollment_refused"


def test_enrolment_with_the_wrong_gpu_model_is_refused_and_changes_nothing(registered):
    server, token = registered
    wrong = [{**card, "name": "NVIDIA GeForce RTX 4090"} for card in cards()]
    response = enroll(token, wrong)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "gpu_model_mismatch"
    server.refresh_from_db()
    assert server.status == "pending_enrollment" and server.agent_id is None
    assert not Gpu.objects.filter(server=server).exists()
    assert enroll(token).status_code == 201, "a refused attempt does not spend the token"


def test_an_expired_token_is_refused(registered):
    server, token = registered
    with time_machine.travel(datetime.now(UTC) + timedelta(days=30)):
        assert enroll(token).status_code == 403


def test_fewer_cards_than_registered_are_accepted_and_flagged(registered):
    server, token = registered
    assert enroll(token, cards(7)).status_code == 201
    server.refresh_from_db()
    assert server.hardware_flag == "the agent found 7 of 8 GPUs"


def test_a_signed_report_is_stored_and_updates_the_cards(agent):
    response = agent.post(agent.body())
    assert response.status_code == 202
    assert response.json() == {"accepted": True}
    assert sample_rows() == 8
    gpu = Gpu.objects.get(uuid=agent.uuids[0])
    assert gpu.last_sample["utilization_pct"] == 50 and gpu.health == "healthy"


def test_a_repeated_seq_is_a_harmless_duplicate(agent):
    body = agent.body()
    assert agent.post(body).status_code == 202
    response = agent.post(body)
    assert response.status_code == 200
    assert response.json() == {"accepted": False, "duplicate": True}
    older = agent.body(seq=1)
    assert agent.post(older).json()["duplicate"] is True
    assert sample_rows() == 8


@pytest.fixture
def whole_second():
    """The clock stopped on the last whole second, so that a timestamp's distance from the platform clock is exactly
    the skew asked for (the header carries whole seconds: time.time() would be rounded down and keep running).
    Today stays today, whose telemetry partition exists."""
    moment = datetime.fromtimestamp(int(time.time()), UTC)
    with time_machine.travel(moment, tick=False):
        yield moment.timestamp()


@pytest.mark.parametrize("skew", [-301, 301])
def test_a_signature_more_than_300_s_off_is_refused(agent, whole_second, skew):
    response = agent.post(agent.body(), timestamp=whole_second + skew)
    assert response.status_code == 401
    assert sample_rows() == 0


def test_a_signature_299_s_old_is_accepted(agent, whole_second):
    assert time.time() == whole_second
    assert agent.post(agent.body(), timestamp=whole_second - 299).status_code == 202


def test_a_changed_byte_or_a_foreign_key_is_refused(agent):
    body = agent.body()
    ts = str(int(time.time()))
    signature = hmac.new(agent.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
    tampered = body.replace(b'"utilization_pct": 50', b'"utilization_pct": 51')
    response = agent.client.post(
        "/api/v1/agent/reports/",
        data=tampered,
        content_type="application/json",
        HTTP_X_AGENT_ID=agent.agent_id,
        HTTP_X_AGENT_TIMESTAMP=ts,
        HTTP_X_AGENT_SIGNATURE=signature,
    )
    assert response.status_code == 401
    assert agent.post(body, secret="not-the-secret").status_code == 401
    assert agent.post(body, agent_id="00000000-0000-0000-0000-000000000000").status_code == 401
    assert agent.post(body, agent_id="nonsense").status_code == 401
    assert sample_rows() == 0


def test_one_hosts_credential_cannot_post_another_hosts_gpu(agent, bob, h100):
    other, token = server_register(
        org=bob.org,
        name="box-2",
        region="cn-east-1",
        gpu_model=h100,
        gpu_count=8,
        cpu_cores=64,
        ram_gb=1024,
        disk_gb=8000,
    )
    assert enroll(token, cards(prefix="bbbb")).status_code == 201
    foreign_uuid = cards(prefix="bbbb")[0]["uuid"]
    intruder = Agent(agent.agent_id, agent.secret, [*agent.uuids, foreign_uuid])
    response = intruder.post(intruder.body(seq=5))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "unknown_gpu"
    assert sample_rows() == 0
    assert Gpu.objects.get(uuid=foreign_uuid).last_sample is None
    assert Server.objects.get(pk=other.pk).last_seq == 0


@pytest.mark.parametrize(
    "mutate",
    [
        lambda r: r.update(seq=-1),
        lambda r: r.update(seq="7"),
        lambda r: r.update(sent_at="yesterday"),
        lambda r: r.update(sent_at="2026-11-01T00:00:00"),
        lambda r: r.update(gpus=[]),
        lambda r: r["gpus"][0].update(utilization_pct=101),
        lambda r: r["gpus"][0].update(temperature_c="hot"),
        lambda r: r["gpus"][0].update(xid_errors="79"),
        lambda r: r["gpus"].append(dict(r["gpus"][0])),
    ],
)
def test_malformed_reports_are_400_and_store_nothing(agent, mutate):
    report = json.loads(agent.body())
    mutate(report)
    response = agent.post(json.dumps(report).encode())
    assert response.status_code == 400, response.content
    assert sample_rows() == 0


def test_nan_in_a_report_is_refused(agent):
    body = agent.body().replace(b'"utilization_pct": 50', b'"utilization_pct": NaN')
    assert agent.post(body).status_code == 400


def test_a_fatal_xid_fails_and_drains_the_card_and_records_the_event(agent):
    agent.post(agent.body())
    agent.post(agent.body(**{agent.uuids[3]: {"xid_errors": [79]}}))
    gpu = Gpu.objects.get(uuid=agent.uuids[3])
    assert gpu.health == "failed" and gpu.drained and "XID 79" in gpu.health_reason
    event = GpuHealthEvent.objects.get(gpu=gpu)
    assert (event.from_health, event.to_health, event.handled_at) == ("healthy", "failed", None)
    agent.post(agent.body())
    gpu.refresh_from_db()
    assert gpu.health == "failed", "a fatal XID latches"
    assert Gpu.objects.filter(server=gpu.server, health="healthy").count() == 7


def test_a_late_spooled_report_is_stored_at_its_own_time_and_queued_for_rollup(agent):
    old = datetime.now(UTC) - timedelta(minutes=20)
    assert agent.post(agent.body(sent_at=old)).status_code == 202
    with connection.cursor() as cursor:
        cursor.execute("SELECT min(ts) FROM inventory_gpusample")
        assert abs((cursor.fetchone()[0] - old).total_seconds()) < 1
        cursor.execute("SELECT count(*) FROM inventory_telemetrybackfill")
        assert cursor.fetchone()[0] == 1
    done = telemetry.rollup()
    assert done["late_minutes"] == 1
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), sum(samples) FROM inventory_gpusample_1m")
        assert cursor.fetchone() == (8, 8)


def test_a_report_that_commits_after_a_roll_up_of_a_later_minute_still_reaches_the_roll_ups(agent):
    """A report taken 175 s before its request started, committed only after a roll-up that ran in the next
    minute: the next roll-up's look-back (3 min behind that watermark) starts after the report's minute, so the
    report must have been queued as late."""
    started = datetime.now(UTC).replace(second=50, microsecond=0) - timedelta(minutes=10)
    taken = started - timedelta(seconds=175)
    telemetry.rollup(now=started + timedelta(seconds=30))  # ran while the report's request was in flight
    with time_machine.travel(started, tick=False):
        assert agent.post(agent.body(sent_at=taken)).status_code == 202
    telemetry.rollup(now=started + timedelta(minutes=1, seconds=30))
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), sum(samples) FROM inventory_gpusample_1m WHERE bucket = %s", [taken.replace(second=0)]
        )
        assert cursor.fetchone() == (8, 8)


@pytest.mark.django_db(transaction=True)
def test_a_report_rewrites_its_server_and_card_rows_in_place(agent):
    """Every report updates its server row and its cards' rows: no index may cover a column those updates change
    (last_seen_at, last_seq, the last sample), so PostgreSQL can make them HOT updates (no new index entries; the
    dead versions pruned on the page) in the room the tables' fill factor leaves.

    Committed, on vacuumed tables: rows that earlier tests wrote and rolled back would otherwise still fill the
    pages (nothing prunes them inside one long test transaction), and whether a page has room would depend on
    which tests ran before."""
    agent.post(agent.body())
    with connection.cursor() as cursor:
        cursor.execute("VACUUM inventory_server, inventory_gpu")

    def updates() -> dict[str, tuple[int, int]]:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT relname, pg_stat_get_xact_tuples_updated(oid), pg_stat_get_xact_tuples_hot_updated(oid) "
                "FROM pg_class WHERE relname IN ('inventory_server', 'inventory_gpu')"
            )
            return {name: (updated, hot) for name, updated, hot in cursor.fetchall()}

    before = updates()
    assert agent.post(agent.body()).status_code == 202
    after = updates()
    for table in ("inventory_server", "inventory_gpu"):
        updated, hot = (after[table][0] - before[table][0], after[table][1] - before[table][1])
        assert updated > 0 and hot == updated, f"{table}: {hot} of {updated} updates were HOT"


def test_rollups_are_idempotent_and_feed_the_telemetry_endpoint(agent, bob):
    start = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    for i in range(12):
        at = start + timedelta(seconds=10 * i)
        agent.post(agent.body(sent_at=at, **{u: {"utilization_pct": 10 * (i % 2)} for u in agent.uuids}))
    first = telemetry.rollup()
    telemetry.rollup()
    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), sum(samples), avg(utilization_pct) FROM inventory_gpusample_1m")
        count, samples, avg = cursor.fetchone()
    assert first["minutes"] == 16 and (count, samples) == (16, 96) and avg == pytest.approx(5)

    server = Server.objects.get(agent_id=agent.agent_id)
    url = f"/api/v1/servers/{server.pk}/telemetry/"
    raw = bob.api.get(
        url, {"since": start.isoformat(), "until": (start + timedelta(minutes=2)).isoformat(), "step": 10}
    )
    assert raw.status_code == 200, raw.content
    body = raw.json()
    assert body["source"] == "raw" and len(body["gpus"]) == 8
    assert len(body["gpus"][0]["points"]) == 12
    minute = bob.api.get(
        url, {"since": start.isoformat(), "until": (start + timedelta(minutes=2)).isoformat(), "step": 60}
    )
    points = minute.json()["gpus"][0]["points"]
    assert minute.json()["source"] == "1m" and [p["utilization_pct"] for p in points] == [5.0, 5.0]


def test_the_telemetry_endpoint_refuses_silly_ranges(agent, bob):
    server = Server.objects.get(agent_id=agent.agent_id)
    url = f"/api/v1/servers/{server.pk}/telemetry/"
    assert bob.api.get(url, {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"}).status_code == 400
    assert bob.api.get(url, {"since": "2020-01-01T00:00:00Z", "step": 1}).status_code == 400
    assert bob.api.get(url, {"since": "garbage"}).status_code == 400
    assert bob.api.get(url).status_code == 200


def test_metrics_expose_each_card_like_dcgm_exporter(agent, staff, settings):
    agent.post(agent.body())
    settings.METRICS_TOKEN = "scrape-me"
    client = APIClient()
    assert client.get("/metrics").status_code == 401
    response = client.get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
    assert response.status_code == 200
    text = response.content.decode()
    util = [line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_GPU_UTIL{")]
    assert len(util) == 8
    assert any(f'UUID="{agent.uuids[0]}"' in line and 'Hostname="gpu-host-1"' in line for line in util)
    assert "suanli_gpu_health" in text


def test_a_reinstalled_agent_enrols_again_with_a_new_token_and_the_old_secret_stops_working(agent, bob):
    server = Server.objects.get(agent_id=agent.agent_id)
    assert agent.post(agent.body()).status_code == 202
    token = bob.api.post(f"/api/v1/servers/{server.pk}/enrollment-token/").json()["enrollment_token"]
    assert agent.post(agent.body()).status_code == 202, "the running agent keeps working until re-enrolment"
    assert enroll(token, cards(prefix="cccc")).json()["error"]["code"] == "gpus_changed"
    again = enroll(token)
    assert again.status_code == 201
    assert agent.post(agent.body()).status_code == 401
    fresh = Agent(again.json()["agent_id"], again.json()["agent_secret"], agent.uuids)
    assert fresh.post(fresh.body()).status_code == 202, "seq restarts with the new credentials"


@time_machine.travel(datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC), tick=False)  # inside one rate window
def test_reports_beyond_the_agent_rate_are_429_with_retry_after_and_forgeries_never_use_it_up(agent, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "agent_reports": "3/60", "agent_auth_fail": "100/60"}
    # Forged reports naming this agent are refused for their signature and do not count against it.
    for _ in range(5):
        assert agent.post(agent.body(), secret="not-the-secret").status_code == 401
    for _ in range(3):
        assert agent.post(agent.body()).status_code == 202
    refused = agent.post(agent.body())
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limited"
    assert 0 < int(refused["Retry-After"]) <= 60


@time_machine.travel(datetime(2026, 11, 29, 12, 0, 5, tzinfo=UTC), tick=False)
def test_an_address_sending_bad_signatures_gets_429_for_them_but_signed_reports_still_pass(agent, settings):
    settings.SUANLI_RATE_LIMITS = {**settings.SUANLI_RATE_LIMITS, "agent_auth_fail": "4/60"}
    for _ in range(4):
        assert agent.post(agent.body(), secret="guess").status_code == 401
    assert agent.post(agent.body(), secret="guess").status_code == 429
    # A correctly signed report is never refused for bad ones from its address (tests/security/test_agent_lockout.py).
    telemetry._known_days.clear()  # the travelled-to day's partition went with an earlier test's transaction
    assert agent.post(agent.body()).status_code == 202
