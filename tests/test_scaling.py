"""Beyond one machine (docs/scaling.md): a Celery queue per kind of job, each consumed by the workers as started, and
offer search, telemetry charts and /metrics on a read replica (`DATABASE_REPLICA_URL`) while writes stay on the
primary."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from django.conf import settings
from django.db import DatabaseError, connections
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from accounts.databases import PRIMARY, REPLICA, read_alias, replica_settings
from config.celery import app
from config.management.commands.dev import Command as DevCommand
from inventory import telemetry
from inventory.models import Gpu, Offer
from scheduler.models import Lease
from tests.factories import online_server

ROOT = Path(settings.BASE_DIR)
DECLARED = [queue.name for queue in settings.CELERY_TASK_QUEUES]
WRITES = re.compile(r"^\s*(INSERT|UPDATE|DELETE|COPY|TRUNCATE|CREATE|ALTER|DROP)\b", re.IGNORECASE)


# --- Celery: a queue per kind of job ----------------------------------------------------------------------------


def _registered_tasks() -> list[str]:
    app.loader.import_default_modules()  # every installed app's tasks module, as a worker imports them
    return sorted(name for name in app.tasks if not name.startswith("celery."))


def _queue_of(name: str) -> str:
    return app.amqp.router.route({}, name)["queue"].name


def test_each_kind_of_job_has_its_own_queue():
    assert _queue_of("inventory.check_agents") == _queue_of("inventory.telemetry_rollup") == "fleet"
    assert _queue_of("scheduler.run_leases") == _queue_of("scheduler.failover") == "scheduler"
    assert _queue_of("billing.meter") == _queue_of("billing.close_period") == "billing"
    assert _queue_of("workloads.check_workloads") == "workloads"
    assert _queue_of("accounts.send_registration_attempt_mail") == "mail"
    assert _queue_of("accounts.purge_expired") == settings.CELERY_TASK_DEFAULT_QUEUE == "celery"
    assert len(set(DECLARED)) == len(DECLARED) == 6


def test_every_registered_and_scheduled_task_routes_to_a_declared_queue():
    tasks = _registered_tasks()
    assert len(tasks) >= 14, tasks  # the tasks modules were found
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled <= set(tasks), f"scheduled but not registered: {scheduled - set(tasks)}"
    stranded = {name: _queue_of(name) for name in tasks if _queue_of(name) not in DECLARED}
    assert not stranded, f"routed to a queue no worker is told to consume: {stranded}"


def test_the_compose_worker_consumes_every_queue():
    yaml = pytest.importorskip("yaml")  # PyYAML comes with drf-spectacular
    command = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]["worker"]["command"]
    found = re.search(r"(?:-Q|--queues)[ =]\$\{WORKER_QUEUES:-([^}]*)\}", command)
    assert found, f"the worker names its queues through WORKER_QUEUES: {command}"
    assert sorted(found.group(1).split(",")) == sorted(DECLARED)


def test_the_dev_worker_consumes_every_queue():
    opts = {"addr": "127.0.0.1", "port": 8000, "pool": "solo", "concurrency": 1, "no_seed": True, "no_agents": True}
    (worker,) = [child for child in DevCommand()._children(opts) if child.name == "worker"]
    named = [arg for arg in worker.argv if arg in ("-Q", "--queues") or arg.startswith(("-Q", "--queues="))]
    assert not named, f"manage.py dev's worker is started without -Q, so it takes every declared queue: {worker.argv}"
    # What a worker started without -Q consumes: the declared queues (CELERY_TASK_QUEUES), all of them.
    assert sorted(app.amqp.queues.consume_from or app.amqp.queues) == sorted(DECLARED)


# --- the read replica -------------------------------------------------------------------------------------------


def _settings_with(env: dict[str, str]) -> dict:
    """config.settings' DATABASES and DATABASE_ROUTERS as a fresh process reads them from `env`."""
    code = (
        "import json, django; from django.conf import settings; django.setup(); "
        "print(json.dumps({'databases': settings.DATABASES, 'routers': settings.DATABASE_ROUTERS}, default=str))"
    )
    base = {k: v for k, v in os.environ.items() if k != "DATABASE_REPLICA_URL"}
    done = subprocess.run(  # noqa: S603 - this interpreter, a fixed script
        [sys.executable, "-c", code],
        env={**base, "DJANGO_SETTINGS_MODULE": "config.settings", "DJANGO_DEBUG": "1", **env},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_database_replica_url_adds_a_read_only_replica_alias_mirrored_in_tests():
    primary_url = os.environ.get("DATABASE_URL") or "postgres://postgres@127.0.0.1:5432/suanli"
    loaded = _settings_with(
        {"DATABASE_URL": primary_url, "DATABASE_REPLICA_URL": "postgres://reader:pw@standby:6432/x"}
    )
    replica, primary = loaded["databases"]["replica"], loaded["databases"]["default"]
    assert (replica["HOST"], replica["PORT"], replica["NAME"], replica["USER"]) == ("standby", 6432, "x", "reader")
    assert replica["ENGINE"] == primary["ENGINE"] == "django.db.backends.postgresql"
    assert "default_transaction_read_only=on" in replica["OPTIONS"]["options"]
    assert "jit=off" in replica["OPTIONS"]["options"], "the primary's session options too"
    assert "read_only" not in primary["OPTIONS"]["options"]
    assert replica["TEST"]["MIRROR"] == "default", "the test runner makes no database of its own for it"
    assert loaded["routers"] == ["accounts.databases.PrimaryReplicaRouter"]

    without = _settings_with({"DATABASE_URL": primary_url})
    assert sorted(without["databases"]) == ["default"]


@pytest.fixture
def replica(transactional_db):
    """The alias `replica` on this test database, configured as settings configure DATABASE_REPLICA_URL: a second
    connection to the same server and database (what the replica holds once replication has caught up), read-only.
    Data must be committed to be seen there, hence the transactional database."""
    primary = connections[PRIMARY].settings_dict
    url = f"postgres://{primary['USER']}:{primary['PASSWORD']}@{primary['HOST']}:{primary['PORT']}/{primary['NAME']}"
    configured = connections.configure_settings({PRIMARY: dict(primary), REPLICA: replica_settings(url, primary)})
    connections.settings[REPLICA] = configured[REPLICA]
    try:
        assert read_alias() == REPLICA
        # Connected here: the test case's guard refuses to open a connection for an alias it was not told of when it
        # started, and the alias cannot exist before then (settings are read once, without DATABASE_REPLICA_URL).
        connections[REPLICA].connect()
        yield connections[REPLICA]
    finally:
        wrapper = connections[REPLICA]
        wrapper.close()
        if getattr(wrapper, "close_pool", None):
            wrapper.close_pool()
        del connections[REPLICA]
        del connections.settings[REPLICA]
    assert read_alias() == PRIMARY


def _touched(queries, *tables: str) -> list[str]:
    # A statement sent in a pipeline with others (scheduler/statements.py) is recorded without its text.
    texts = [q["sql"] or "" for q in queries]
    return [sql for sql in texts if any(f'"{t}"' in sql or f" {t} " in sql for t in tables)]


# What a search reads: the offers, or the listing kept from them (marketplace.models.OfferListing).
SEARCH_TABLES = ("inventory_offer", "marketplace_offerlisting")


def test_without_a_replica_everything_reads_the_primary(db):
    assert read_alias() == PRIMARY
    assert sorted(connections.settings) == [PRIMARY]


def test_offer_search_and_charts_read_the_replica_and_writes_stay_on_the_primary(replica, alice, bob, settings):
    server = online_server(organization=bob.org, gpus=2)
    offer = Offer.objects.get(server=server)
    gpu = Gpu.objects.filter(server=server).order_by("index").first()
    now = timezone.now().replace(microsecond=0)
    telemetry.copy_samples([(now - timedelta(minutes=5), gpu.pk, server.pk, 77.0, 1024, 60.0, 300.0, 1400, 0, 0, "{}")])
    try:
        with CaptureQueriesContext(connections[PRIMARY]) as on_primary, CaptureQueriesContext(replica) as on_replica:
            found = alice.api.get("/api/v1/offers/", {"min_gpus": 1})
            chart = bob.api.get(
                f"/api/v1/servers/{server.pk}/telemetry/",
                {"since": (now - timedelta(hours=1)).isoformat(), "until": now.isoformat(), "step": 30},
            )
        assert found.status_code == 200, found.content
        assert [row["id"] for row in found.json()["results"]] == [offer.pk]
        assert found.json()["results"][0]["gpus_free"] == 2
        assert chart.status_code == 200, chart.content
        points = {g["index"]: g["points"] for g in chart.json()["gpus"]}
        assert [p["utilization_pct"] for p in points[0]] == [77.0] and points[1] == []
        assert _touched(on_replica, *SEARCH_TABLES), "the search ran on the replica"
        assert not _touched(on_primary, *SEARCH_TABLES), "and not on the primary"
        assert _touched(on_replica, "inventory_gpusample"), "the chart's series came from the replica"
        assert not _touched(on_primary, "inventory_gpusample")

        # The operator's /metrics reads every card's latest sample: from the replica too.
        settings.METRICS_TOKEN = "scrape-me"
        with CaptureQueriesContext(connections[PRIMARY]) as on_primary, CaptureQueriesContext(replica) as on_replica:
            scraped = Client().get("/metrics", HTTP_AUTHORIZATION="Bearer scrape-me")
        assert scraped.status_code == 200, scraped.content
        assert f'UUID="{gpu.uuid}"' in scraped.content.decode()
        assert _touched(on_replica, "inventory_gpu") and not _touched(on_primary, "inventory_gpu")

        # Renting the offer just found: every statement on the primary, none on the replica.
        with CaptureQueriesContext(connections[PRIMARY]) as on_primary, CaptureQueriesContext(replica) as on_replica:
            rented = alice.api.post("/api/v1/leases/", {"plan": "card_hour", "gpu_count": 1, "offer": offer.pk})
        assert rented.status_code == 201, rented.content
        assert not on_replica.captured_queries
        assert any(WRITES.match(q["sql"] or "") for q in on_primary.captured_queries)

        # An object read from the replica is written to the primary, and so is a row that points at it.
        from_replica = Offer.objects.using(REPLICA).get(pk=offer.pk)
        assert from_replica._state.db == REPLICA
        with CaptureQueriesContext(connections[PRIMARY]) as on_primary, CaptureQueriesContext(replica) as on_replica:
            from_replica.min_gpus = 2
            from_replica.save(update_fields=["min_gpus"])
            lease = Lease.objects.get(pk=rented.json()["id"])
            lease.offer = from_replica
            lease.save(update_fields=["offer"])
        assert not [q["sql"] for q in on_replica.captured_queries if WRITES.match(q["sql"] or "")]
        assert Offer.objects.using(PRIMARY).get(pk=offer.pk).min_gpus == 2
        assert lease._state.db == PRIMARY

        # And the replica's sessions refuse a write outright, as a hot standby's do.
        with pytest.raises(DatabaseError, match="read-only transaction"):
            Offer.objects.using(REPLICA).filter(pk=offer.pk).update(min_gpus=1)
    finally:
        with connections[PRIMARY].cursor() as cursor:  # raw telemetry is not a model table: the flush leaves it
            cursor.execute("DELETE FROM inventory_gpusample WHERE server_id = %s", [server.pk])
