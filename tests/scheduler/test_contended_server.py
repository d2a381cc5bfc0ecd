"""Two requests whose best fit is the same server, the first still in its transaction: the second does not queue
behind the first's insert (the capacity triggers hold the server's capacity row until it commits) but places on the
next-best server at once (scheduler/locks.py: the claim takes the capacity row `FOR UPDATE SKIP LOCKED`)."""

from __future__ import annotations

import threading

import pytest
from django.db import connections, transaction

from scheduler import services
from scheduler.models import Allocation, Lease
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, online_server
from tests.scheduler.test_concurrency import overlapping_pairs
from tests.support.db import own_connection

PATIENCE = 10  # seconds the second request may take; it waited for the first's commit if it takes longer


@pytest.mark.django_db(transaction=True)
def test_second_request_places_on_the_next_best_server_while_the_first_holds_the_best():
    provider = ProviderFactory()
    model = GpuModelFactory()
    best = online_server(organization=provider, gpu_model=model, gpus=2, name="contended-best")  # fewest free
    other = online_server(organization=provider, gpu_model=model, gpus=8, name="contended-other")
    first_org, second_org = OrganizationFactory(), OrganizationFactory()
    placed = threading.Barrier(2, timeout=PATIENCE)
    release = threading.Event()
    servers: dict[str, set[int]] = {}
    errors: list[BaseException] = []

    def first() -> None:
        own_connection()
        try:
            with transaction.atomic():
                lease = services.lease_create(org=first_org, plan="card_hour", gpu_count=1)
                servers["first"] = set(lease.allocations.values_list("server_id", flat=True))
                placed.wait()
                release.wait(timeout=60)  # the transaction stays open (and the best server's capacity row locked)
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
            placed.abort()
        finally:
            connections["default"].close()

    def second() -> None:
        own_connection()
        try:
            placed.wait()
            lease = services.lease_create(org=second_org, plan="card_hour", gpu_count=1)
            servers["second"] = set(lease.allocations.values_list("server_id", flat=True))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            errors.append(exc)
        finally:
            connections["default"].close()

    one, two = threading.Thread(target=first), threading.Thread(target=second)
    one.start()
    two.start()
    two.join(timeout=PATIENCE)
    waited = two.is_alive()
    release.set()
    one.join()
    two.join()

    assert not errors
    assert not waited, "the second request waited for the first's transaction"
    assert servers == {"first": {best.pk}, "second": {other.pk}}
    assert Lease.objects.count() == 2
    assert Allocation.objects.count() == 2
    assert overlapping_pairs() == 0
