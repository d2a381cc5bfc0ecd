"""Racing requests, each on its own database connection, never share a card and never get half a lease."""

from __future__ import annotations

import queue
import random
import threading
from collections import Counter
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.utils import timezone

from accounts.errors import DomainError
from scheduler import services
from scheduler.models import Allocation, Lease
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, online_server
from tests.support.db import own_connection

WORKERS = 24  # parallel connections (the shared PostgreSQL allows 100 in all)


def race(requests: int, call) -> Counter:
    jobs: queue.Queue[int] = queue.Queue()
    for index in range(requests):
        jobs.put(index)
    outcomes: Counter = Counter()
    lock = threading.Lock()
    start = threading.Barrier(WORKERS)

    def worker() -> None:
        own_connection()
        try:
            start.wait()
            while True:
                try:
                    index = jobs.get_nowait()
                except queue.Empty:
                    return
                try:
                    call(index)
                    result = "granted"
                except DomainError as exc:
                    result = exc.code
                except Exception as exc:  # noqa: BLE001 - counted, then asserted absent
                    result = f"crash: {exc!r}"
                with lock:
                    outcomes[result] += 1
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=worker) for _ in range(WORKERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def overlapping_pairs() -> int:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM scheduler_allocation a JOIN scheduler_allocation b "
            "ON a.gpu_id = b.gpu_id AND a.id < b.id AND a.period && b.period"
        )
        return cursor.fetchone()[0]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("seed", [1, 2])
def test_racing_requests_never_share_a_card(seed):
    rng = random.Random(seed)
    provider = ProviderFactory()
    model = GpuModelFactory()
    sizes = [8] * 17 + [6, 4, 4]  # 150 cards on 20 servers of different sizes
    rng.shuffle(sizes)
    for index, size in enumerate(sizes):
        online_server(organization=provider, gpu_model=model, gpus=size, name=f"race-{seed}-{index}")
    customers = [OrganizationFactory() for _ in range(5)]

    outcomes = race(200, lambda i: services.lease_create(org=customers[i % 5], plan="card_hour", gpu_count=1))

    assert outcomes == Counter({"granted": 150, "no_capacity": 50})
    assert Lease.objects.count() == 150
    assert Allocation.objects.count() == 150
    assert Allocation.objects.values("gpu_id").distinct().count() == 150
    assert overlapping_pairs() == 0


@pytest.mark.django_db(transaction=True)
def test_racing_whole_server_requests_never_leave_a_server_partly_allocated():
    provider = ProviderFactory()
    model = GpuModelFactory()
    servers = [online_server(organization=provider, gpu_model=model, name=f"whole-{i}") for i in range(6)]
    customer = OrganizationFactory()
    end = timezone.now() + timedelta(days=30)

    outcomes = race(50, lambda i: services.lease_create(org=customer, plan="server_month", servers=1, end_at=end))

    assert outcomes == Counter({"granted": 6, "no_capacity": 44})
    per_server = Counter(Allocation.objects.values_list("server_id", flat=True))
    assert per_server == Counter({s.pk: 8 for s in servers})
    for lease in Lease.objects.all():
        assert set(lease.allocations.values_list("server_id", flat=True)).__len__() == 1
    assert overlapping_pairs() == 0
