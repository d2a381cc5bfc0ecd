"""Liveness: reports mark a server seen; `check_agents` marks silent ones unreachable."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import StringIO

import pytest
import time_machine
from django.core.management import call_command
from django.test import override_settings

from inventory.models import Server, ServerOutage
from inventory.services import server_mark_seen, servers_mark_unreachable
from inventory.tasks import check_agents_task
from tests.factories import ServerFactory

START = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def online(**kwargs) -> Server:
    return ServerFactory(status="online", enrolled_at=START, last_seen_at=START, **kwargs)


@pytest.fixture
def clock():
    with time_machine.travel(START, tick=False) as traveller:
        yield traveller


@override_settings(SUANLI_AGENT_SILENT_INTERVALS=3, SUANLI_AGENT_INTERVAL_SECONDS=10)
def test_a_server_silent_for_longer_than_three_intervals_becomes_unreachable(db, clock):
    server = online()
    clock.shift(timedelta(seconds=30))
    assert servers_mark_unreachable() == 0  # exactly at the limit: still online
    clock.shift(timedelta(seconds=1))
    assert servers_mark_unreachable() == 1
    server.refresh_from_db()
    assert server.status == Server.Status.UNREACHABLE
    assert servers_mark_unreachable() == 0  # idempotent


@override_settings(SUANLI_AGENT_SILENT_INTERVALS=3, SUANLI_AGENT_INTERVAL_SECONDS=10)
def test_only_silent_online_servers_change(db, clock):
    silent = online(name="silent")
    chatty = online(name="chatty")
    waiting = ServerFactory(name="waiting", status="pending_enrollment")
    retired = ServerFactory(name="retired", status="retired", last_seen_at=START)
    clock.shift(timedelta(minutes=5))
    server_mark_seen(server_id=chatty.pk)
    out = StringIO()
    call_command("check_agents", stdout=out)
    assert "1 server(s) marked unreachable" in out.getvalue()
    statuses = dict(Server.objects.values_list("name", "status"))
    assert statuses == {
        silent.name: "unreachable",
        chatty.name: "online",
        waiting.name: "pending_enrollment",
        retired.name: "retired",
    }


@override_settings(SUANLI_AGENT_SILENT_INTERVALS=3, SUANLI_AGENT_INTERVAL_SECONDS=10)
def test_the_celery_task_runs_the_same_check(db, clock):
    server = online()
    clock.shift(timedelta(minutes=1))
    assert check_agents_task.name == "inventory.check_agents"
    assert check_agents_task.apply().get() == 1
    server.refresh_from_db()
    assert server.status == Server.Status.UNREACHABLE


def test_a_report_brings_an_unreachable_server_back_online(db, clock):
    server = online()
    Server.objects.filter(pk=server.pk).update(status="unreachable")
    clock.shift(timedelta(minutes=2))
    assert server_mark_seen(server_id=server.pk) is True
    server.refresh_from_db()
    assert (server.status, server.last_seen_at) == ("online", START + timedelta(minutes=2))


def test_a_late_report_never_moves_last_seen_backwards(db, clock):
    server = online()
    assert server_mark_seen(server_id=server.pk, now=START - timedelta(seconds=5)) is False
    server.refresh_from_db()
    assert server.last_seen_at == START


def test_a_server_not_yet_enrolled_or_retired_is_not_marked_seen(db, clock):
    waiting = ServerFactory(status="pending_enrollment")
    retired = ServerFactory(status="retired", enrolled_at=START)
    assert server_mark_seen(server_id=waiting.pk) is False
    assert server_mark_seen(server_id=retired.pk) is False
    assert set(Server.objects.values_list("status", flat=True)) == {"pending_enrollment", "retired"}


def test_the_check_costs_the_same_few_statements_for_one_server_or_many(db, clock, django_assert_max_num_queries):
    online()
    clock.shift(timedelta(hours=1))
    with django_assert_max_num_queries(5):  # savepoint, claim (skip locked), update, outages insert, release
        assert servers_mark_unreachable() == 1
    for _ in range(20):
        online()
    clock.shift(timedelta(hours=1))
    with django_assert_max_num_queries(5):
        assert servers_mark_unreachable() == 20


def test_an_unreachable_spell_is_one_outage_from_the_last_report_until_the_next(db, clock):
    server = online()
    clock.shift(timedelta(minutes=5))
    servers_mark_unreachable()
    servers_mark_unreachable()  # again: still one open outage
    outage = ServerOutage.objects.get(server=server)
    assert outage.started_at == START and outage.ended_at is None
    clock.shift(timedelta(minutes=5))
    assert server_mark_seen(server_id=server.pk)
    outage.refresh_from_db()
    assert outage.ended_at == START + timedelta(minutes=10)
    server.refresh_from_db()
    assert server.status == "online"
