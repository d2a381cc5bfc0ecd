"""The platform killed in the middle of agent reports (issue 18): what a 202 promises survives a SIGKILL.

A 202 is answered only after the report's transaction committed: its samples, its cards' state and its `seq` claim
are stored, once. A report that got no answer (the platform died under it) was stored completely or not at all, and
the agent's re-send of it (same body, same `seq`) is then either the duplicate (200) or the first (202): stored
exactly once either way. Against a real gunicorn, SIGKILLed with its workers, on the test database.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from django.conf import settings
from django.db import connection

from agents import signing
from inventory import ingest
from inventory.services import server_register
from tests.support.agent_reports import cards
from tests.support.processes import ROOT, free_port, production_env

# Starts gunicorn three times and waits on it: several seconds.
pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

REPORT_PATH = "/api/v1/agent/reports/"


class Platform:
    """gunicorn (one sync worker) on the test database, in a process group of its own: one SIGKILL takes the master
    and its worker down at once, as a crash or an OOM kill of the machine's web tier would."""

    def __init__(self, tmp_path: Path):
        db = settings.DATABASES["default"]
        self.env = production_env(
            DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
            SUANLI_VAR_DIR=str(tmp_path / "var"),
            SECURE_SSL_REDIRECT="0",
            RATE_LIMIT_AGENT_REPORTS="1000000/60",
            LOG_LEVEL="WARNING",
            # The agent secrets this process sealed (with its own key) must open there too.
            AGENT_SECRET_KEYS=",".join(settings.AGENT_SECRET_KEYS) or settings.SECRET_KEY,
        )
        self.log = tmp_path / "gunicorn.log"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{self.port}", "--workers", "1"],
            cwd=ROOT,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=self.log.open("a"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-3000:]
            try:
                if self.get("/healthz") == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        self.kill()
        raise AssertionError("gunicorn did not answer /healthz within 60 s:\n" + self.log.read_text()[-3000:])

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)

    def get(self, path: str) -> int:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path)
            return conn.getresponse().status
        finally:
            conn.close()


class FakeAgent:
    """One enrolled server's agent: it keeps each report's body, so a re-send is the same report (same seq)."""

    def __init__(self, org, gpu_model, name: str):
        server, token = server_register(
            org=org,
            name=name,
            region="cn-east-1",
            gpu_model=gpu_model,
            gpu_count=8,
            cpu_cores=64,
            ram_gb=1024,
            disk_gb=8000,
        )
        gpus = cards(prefix=name[-4:].rjust(4, "0"))
        server, self.secret = ingest.agent_enroll(enrollment_token=token, hostname=name, gpus=gpus)
        self.server_id, self.agent_id, self.uuids = server.pk, str(server.agent_id), [g["uuid"] for g in gpus]
        self.bodies: dict[int, bytes] = {}
        self.sent_at: dict[int, datetime] = {}
        self.answers: dict[int, int | None] = {}  # seq -> status of the last try, None: no answer

    def body(self, seq: int) -> bytes:
        if seq not in self.bodies:
            self.sent_at[seq] = datetime.now(UTC)
            gpus = [{"uuid": u, "utilization_pct": seq % 100, "temperature_c": 60, "ecc_dbe": 0} for u in self.uuids]
            report = {"seq": seq, "sent_at": self.sent_at[seq].isoformat(), "gpus": gpus}
            self.bodies[seq] = json.dumps(report).encode()
        return self.bodies[seq]

    def post(self, port: int, seq: int, timeout: float = 30) -> int | None:
        """POST report `seq`; its status, or None when the platform gave no answer (the connection died)."""
        body = self.body(seq)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        try:
            conn.request("POST", REPORT_PATH, body=body, headers=signing.headers(self.agent_id, self.secret, body))
            response = conn.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            status = None
        finally:
            conn.close()
        self.answers[seq] = status
        return status

    def stored(self) -> dict[int, int]:
        """seq -> raw sample rows stored for it (each report has its own sent_at, stored as the rows' ts)."""
        by_time = {at: seq for seq, at in self.sent_at.items()}
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT ts, count(*) FROM inventory_gpusample WHERE server_id = %s GROUP BY ts", [self.server_id]
            )
            rows = cursor.fetchall()
        assert all(ts in by_time for ts, _ in rows), "rows of a report this agent never sent"
        return {by_time[ts]: count for ts, count in rows}

    def last_seq(self) -> int:
        with connection.cursor() as cursor:
            cursor.execute("SELECT last_seq FROM inventory_server WHERE id = %s", [self.server_id])
            return cursor.fetchone()[0]


def _backends_waiting_on_a_lock(dbname: str) -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND wait_event_type = 'Lock' "
            "AND query LIKE 'WITH claim AS%%'",
            [dbname],
        )
        return cursor.fetchone()[0]


def _busy_sessions(dbname: str) -> int:
    """Other sessions of the test database that run a statement or hold a transaction open."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid() "
            "AND backend_type = 'client backend' AND state <> 'idle'",
            [dbname],
        )
        return cursor.fetchone()[0]


def _until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.05)


def test_a_report_killed_after_its_claim_is_not_stored_and_its_resend_is_stored_once(tmp_path, bob, h100):
    """Deterministic: the report has claimed its seq and waits for a card lock (another session holds it) when the
    platform is killed. Its transaction dies with the connection; the re-send after the restart is the first."""
    agent = FakeAgent(bob.org, h100, "kill-0001")
    platform = Platform(tmp_path)
    platform.start()
    db = settings.DATABASES["default"]
    blocker = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"],
        password=db["PASSWORD"] or None,
    )  # fmt: skip
    try:
        assert agent.post(platform.port, 1) == 202
        blocker.execute(
            "SELECT id FROM inventory_gpu WHERE server_id = %s ORDER BY id LIMIT 1 FOR UPDATE", [agent.server_id]
        )
        poster = threading.Thread(target=agent.post, args=(platform.port, 2))
        poster.start()
        _until(lambda: _backends_waiting_on_a_lock(db["NAME"]) == 1, 30, "the report's claim waiting on the card")
        platform.kill()
        poster.join(timeout=30)
        assert agent.answers[2] is None
        blocker.rollback()  # the report's statement goes on, finds its client gone, and its transaction is rolled back
        _until(lambda: _backends_waiting_on_a_lock(db["NAME"]) == 0, 30, "the killed report's session gone")
        _until(lambda: agent.last_seq() == 1, 30, "the killed report's claim rolled back")
        assert agent.stored() == {1: 8}
        platform.start()
        assert agent.post(platform.port, 2) == 202  # the agent's re-send of the unanswered report
        assert agent.post(platform.port, 2) == 200  # and a second copy of it is the duplicate
        assert agent.post(platform.port, 3) == 202
        assert agent.stored() == {1: 8, 2: 8, 3: 8}
        assert agent.last_seq() == 3
    finally:
        blocker.close()
        platform.kill()


def test_agents_posting_while_the_platform_is_killed_lose_nothing_and_store_nothing_twice(tmp_path, bob, h100):
    """Four agents post back to back; the platform is SIGKILLed at a moment nobody chose. Every report answered
    202 is stored exactly once; every unanswered one at most once, and after the agents re-send them, once."""
    agents = [FakeAgent(bob.org, h100, f"kill-{n:04d}") for n in range(2, 6)]
    platform = Platform(tmp_path)
    platform.start()
    stop = threading.Event()
    cut: dict[FakeAgent, int] = {}  # the report each agent had in flight when the platform died

    def run(agent: FakeAgent) -> None:
        seq = 0
        while not stop.is_set():
            seq += 1
            status = agent.post(platform.port, seq)
            if status is None:
                cut[agent] = seq
                return
            assert status == 202, (seq, status)

    threads = [threading.Thread(target=run, args=(agent,)) for agent in agents]
    try:
        for thread in threads:
            thread.start()
        _until(lambda: sum(len(a.answers) for a in agents) >= 40, 60, "40 reports answered")
        time.sleep(0.137)  # not a multiple of anything the platform does
        platform.kill()
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        assert cut, "the kill cut no report short"
        # The killed worker's PostgreSQL session ends (a transaction still open in it is rolled back).
        _until(lambda: _busy_sessions(settings.DATABASES["default"]["NAME"]) == 0, 30, "the platform's session gone")
        unanswered = {}
        for agent in agents:
            stored = agent.stored()
            for seq, status in agent.answers.items():
                if status == 202:
                    assert stored.get(seq) == 8, (agent.server_id, seq, stored.get(seq))
                else:
                    assert status is None and seq == cut[agent]
                    assert stored.get(seq, 0) in (0, 8), "an unanswered report is stored whole or not at all"
                    unanswered[agent] = (seq, stored.get(seq, 0))
            assert set(stored) <= set(agent.answers), "only reports that were sent"
        platform.start()
        for agent, (seq, rows) in unanswered.items():
            # The re-send: a report the platform committed before it died is the duplicate, any other the first.
            assert agent.post(platform.port, seq) == (200 if rows else 202)
            assert agent.post(platform.port, seq + 1) == 202
        for agent in agents:
            assert set(agent.stored().values()) == {8}
            assert sorted(agent.stored()) == list(range(1, max(agent.answers) + 1))
            assert agent.last_seq() == max(agent.answers)
    finally:
        stop.set()
        platform.kill()
