"""`lease_create`'s usual path in few statements (issue 18): the claim reads what pricing, the lease row and its event
need, the lease row is written once after placing, and a card lost to a racing commit between the snapshot and the
lock (the exclusion constraint refuses it) costs a round, not the request. The best fit and the claim are compiled
once per shape (scheduler/statements.py) and take each call's values."""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from inventory.models import Gpu
from scheduler import locks, services, statements
from scheduler.models import Allocation, Lease, LeaseEvent
from tests.factories import online_server

# Round trips: BEGIN (a savepoint in a test), the best fit, the claim (its savepoint in the same round trip), the lease
# row (once, placed and priced) with its event in one statement, admission and the allocations; the transaction's end.
MOST_ROUND_TRIPS = 7


def _overlaps() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b "
            "ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.period && b.period"
        )
        return cursor.fetchone()[0]


def test_a_lease_on_one_server_takes_few_statements_and_reads_no_row_it_wrote(alice, bob, h100):
    server = online_server(organization=bob.org, gpu_model=h100, gpus=8, offer={"card_hour_price": Decimal("3.25")})
    with CaptureQueriesContext(connection) as queries:
        lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    sent = [q["sql"] or "" for q in queries.captured_queries]  # a statement in a pipeline is recorded without text
    # What goes in the round trip of the statement after it: the claim's savepoint, the best fit's plan mode and back.
    riding = ('SAVEPOINT "claim_', "SET plan_cache_mode", "RESET plan_cache_mode")
    assert len([sql for sql in sent if not sql.startswith(riding)]) <= MOST_ROUND_TRIPS, [sql[:120] for sql in sent]
    written = [sql for sql in sent if 'INTO "scheduler_lease"' in sql]
    assert len(written) == 1 and 'INSERT INTO "scheduler_leaseevent"' in written[0]  # the row once, with its event
    assert not [sql for sql in sent if sql.startswith('UPDATE "scheduler_lease"')]
    made = lease
    lease = Lease.objects.get(pk=lease.pk)
    assert (lease.created_at, lease.state, lease.organization_id) == (made.created_at, "active", alice.org.pk)
    rows = list(Allocation.objects.filter(lease=lease).select_related("gpu").order_by("gpu_id"))
    assert [row.gpu.server_id for row in rows] == [server.pk, server.pk]
    assert lease.gpu_count == 2
    assert lease.unit_price == Decimal("3.25") and {row.unit_price for row in rows} == {Decimal("3.25")}
    assert lease.price_book == {str(server.pk): "3.250000"}
    assert lease.delivered_pflops == Decimal("1.979")  # 2 x 989.40 TFLOPS
    (event,) = LeaseEvent.objects.filter(lease=lease)
    assert event.kind == LeaseEvent.Kind.CREATED
    assert event.data["gpus"] == [row.gpu.uuid for row in rows]
    assert event.data["state"] == "active" and event.data["end_at"] is None
    assert event.at == lease.start_at and event.data["start_at"] == lease.start_at.isoformat()


@pytest.mark.django_db(transaction=True)
def test_a_card_taken_by_a_racing_commit_costs_a_round_and_the_lease_still_gets_free_cards(
    alice, bob, h100, monkeypatch
):
    """The claim's snapshot saw a card free that a transaction committed after it: the first claim returns a card
    another lease holds (as such a race would), the exclusion constraint refuses it, the placement rolls back to its
    savepoint and claims again, and the request's transaction goes on to a whole lease."""
    server = online_server(organization=bob.org, gpu_model=h100, gpus=8)
    first = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1)
    taken = Allocation.objects.get(lease=first).gpu_id
    real = locks.claim_free_cards
    calls = []

    def racing_claim(**kwargs):
        cards = real(**kwargs)
        calls.append([card.pk for card in cards])
        if len(calls) == 1:
            cards[0].pk = cards[0].id = taken  # the card the first lease committed
        return cards

    monkeypatch.setattr(locks, "claim_free_cards", racing_claim)
    lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=2)
    assert len(calls) == 2
    held = sorted(Allocation.objects.filter(lease=lease).values_list("gpu_id", flat=True))
    assert len(held) == 2 and taken not in held
    assert all(Allocation.objects.get(lease=lease, gpu_id=gpu_id).server_id == server.pk for gpu_id in held)
    lease.refresh_from_db()
    assert lease.gpu_count == 2 and lease.price_book == {str(server.pk): lease.price_book[str(server.pk)]}
    (event,) = LeaseEvent.objects.filter(lease=lease)
    uuids = dict(Allocation.objects.filter(lease=lease).values_list("gpu_id", "gpu__uuid"))
    assert event.data["gpus"] == [uuids[gpu_id] for gpu_id in held]
    assert _overlaps() == 0


def test_a_compiled_statement_takes_each_calls_values(bob, h100):
    one = online_server(organization=bob.org, gpu_model=h100, gpus=2, name="one")
    two = online_server(organization=bob.org, gpu_model=h100, gpus=3, name="two")

    def build(stand_in):
        return Gpu.objects.unscoped("a test").filter(server_id=stand_in["server_id"]).values("id")

    for server in (one, two, one):
        sql, params = statements.compiled(("a test", "cards of a server"), build, {"server_id": server.pk})
        found = {row["id"] for row in statements.fetch_dicts(sql, params)}
        assert found == set(Gpu.objects.filter(server=server).values_list("pk", flat=True))


def test_a_value_the_statement_does_not_take_as_a_parameter_is_refused(db):
    with pytest.raises(ValueError, match="server_id"):
        statements.compiled(
            ("a test", "no server"), lambda stand_in: Gpu.objects.unscoped("a test").all(), {"server_id": 1}
        )


def test_leases_of_different_shapes_each_get_cards_that_match_them(alice, bob, h100, a100):
    """One shape compiled for one model and region does not answer for another (the filters are in the key)."""
    north = online_server(organization=bob.org, gpu_model=h100, gpus=4, region="north", name="north")
    south = online_server(organization=bob.org, gpu_model=a100, gpus=4, region="south", name="south")
    for _ in range(2):
        for model, region, server in ((h100, "north", north), (a100, "south", south)):
            lease = services.lease_create(org=alice.org, plan="card_hour", gpu_count=1, gpu_model=model, region=region)
            assert Allocation.objects.get(lease=lease).server_id == server.pk
