"""A quiet report (no card's health or drain changes) is written by one statement that waits for no lock
(inventory/ingest.py, _write_unlocked_sql, issue 18); anything that moved since its read sends it down the locked
path, which decides it as before. What is stored and answered must not differ (API.md, Agent)."""

from __future__ import annotations

import psycopg
import pytest
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from inventory import ingest
from inventory.models import Gpu, GpuHealthEvent, Server
from inventory.services import gpu_drain
from tests.support.agent_reports import sample_rows


@pytest.fixture
def locked_path(monkeypatch):
    """The reports that took the locked path (its claim), by seq."""
    taken: list[int] = []
    claim = ingest._claim

    def spy(*, server_id, seq, now):
        taken.append(seq)
        return claim(server_id=server_id, seq=seq, now=now)

    monkeypatch.setattr(ingest, "_claim", spy)
    return taken


def _read_then_ingest(agent, body: bytes, between=None):
    """What the view does, with `between` run after the read of the server and its cards and before the write."""
    now = timezone.now()
    cards: dict = {}
    server = ingest.authenticate_report(
        agent_id=agent.agent_id,
        timestamp=str(int(now.timestamp())),
        signature=ingest.signature_for(agent.secret, str(int(now.timestamp())), body),
        body=body,
        now=now,
        cards=cards,
    )
    assert len(cards) == 8 and all(card.version for card in cards.values())
    if between is not None:
        between()
    return ingest.report_ingest(server=server, report=ingest.parse_report(body), now=now, cards=cards)


def test_a_quiet_report_is_stored_by_the_one_statement_and_rewrites_only_the_last_sample(agent, locked_path):
    assert agent.post(agent.body()).status_code == 202
    assert locked_path == []  # enrolled, the server is online already: the first report is quiet too
    before = {
        g.pk: (g.health, g.drained, g.health_changed_at) for g in Gpu.objects.filter(server__agent_id=agent.agent_id)
    }
    response = agent.post(agent.body(**{agent.uuids[0]: {"utilization_pct": 77}}))
    assert response.status_code == 202 and response.content == b'{"accepted":true}'
    assert locked_path == []
    server = Server.objects.get(agent_id=agent.agent_id)
    assert server.last_seq == 2 and server.status == Server.Status.ONLINE
    assert sample_rows() == 16
    cards = Gpu.objects.filter(server=server).order_by("index")
    assert cards[0].last_sample["utilization_pct"] == 77 and cards[1].last_sample["utilization_pct"] == 50
    assert {g.pk: (g.health, g.drained, g.health_changed_at) for g in cards} == before
    again = agent.post(agent.body(seq=2))  # its duplicate: decided by the locked path, stores nothing
    assert again.status_code == 200 and again.json() == {"accepted": False, "duplicate": True}
    assert sample_rows() == 16 and Server.objects.get(pk=server.pk).last_seq == 2


def test_a_report_that_changes_a_cards_health_takes_the_locked_path_with_its_event(agent, locked_path):
    assert agent.post(agent.body()).status_code == 202
    assert agent.post(agent.body(**{agent.uuids[3]: {"xid_errors": [79]}})).status_code == 202
    assert locked_path == [2]
    card = Gpu.objects.get(uuid=agent.uuids[3])
    assert card.health == Gpu.Health.FAILED and card.drained
    assert GpuHealthEvent.objects.filter(gpu=card, to_health=Gpu.Health.FAILED).count() == 1


def test_a_card_drained_between_the_read_and_the_write_stays_drained(agent, locked_path):
    assert agent.post(agent.body()).status_code == 202

    def drain():
        with transaction.atomic():  # another transaction: a new row version of the card
            gpu_drain(gpu=Gpu.objects.get(uuid=agent.uuids[5]), reason="maintenance")

    result = _read_then_ingest(agent, agent.body(), between=drain)
    assert result.accepted and locked_path == [2]  # the one statement found the card changed: nothing written
    card = Gpu.objects.get(uuid=agent.uuids[5])
    assert card.drained and card.drained_reason == "maintenance"
    assert card.last_sample is not None and sample_rows() == 16
    assert Server.objects.get(agent_id=agent.agent_id).last_seq == 2


def test_a_report_of_the_same_seq_claimed_between_the_read_and_the_write_is_the_duplicate(agent, locked_path):
    assert agent.post(agent.body()).status_code == 202
    body = agent.body()
    result = _read_then_ingest(agent, body, between=lambda: _read_then_ingest(agent, body))
    assert result.duplicate and not result.accepted
    assert sample_rows() == 16 and Server.objects.get(agent_id=agent.agent_id).last_seq == 2


def test_new_credentials_between_the_read_and_the_write_leave_the_one_statement_unclaimed(agent, locked_path):
    assert agent.post(agent.body()).status_code == 202

    def rotate():
        ingest.agent_credentials_issue(server=Server.objects.get(agent_id=agent.agent_id))

    _read_then_ingest(agent, agent.body(), between=rotate)
    assert locked_path == [2]  # what the locked path then does is what it did before (it trusts the read)


def _rows_of(agent) -> int:
    """Raw sample rows of the agent's server (committed rows of other tests' servers may remain: the raw table is
    partitioned, not a model, and a transactional test's flush leaves it)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM inventory_gpusample WHERE server_id = "
            "(SELECT id FROM inventory_server WHERE agent_id = %s)",
            [agent.agent_id],
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
def test_a_card_locked_by_another_session_is_not_waited_for(agent, locked_path):
    """The one statement skips what it cannot lock at once and leaves the report to the locked path (which waits
    for the card, in its own transaction, as before): it never holds a lock while it waits for another."""
    assert agent.post(agent.body()).status_code == 202
    db = settings.DATABASES["default"]
    other = psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"],
        password=db["PASSWORD"] or None,
    )  # fmt: skip
    try:
        other.execute("SELECT id FROM inventory_server WHERE agent_id = %s FOR UPDATE", [agent.agent_id])
        with connection.cursor() as cursor:
            cursor.execute("SET lock_timeout = '200ms'")  # the locked path's wait, cut short for the test
        with pytest.raises(Exception, match="lock timeout"):
            _read_then_ingest(agent, agent.body())
        assert locked_path == [2]
        other.rollback()
        assert _rows_of(agent) == 8 and Server.objects.get(agent_id=agent.agent_id).last_seq == 1
        assert agent.post(agent.body(seq=agent.seq)).status_code == 202
        assert locked_path == [2]  # the re-send, nothing in its way: the one statement
        assert _rows_of(agent) == 16
    finally:
        other.close()
        with connection.cursor() as cursor:
            cursor.execute("RESET lock_timeout")
