"""Racing runs of the scaling job (two beat workers, a retried task) and a customer's own resize, each on its own
database connection: a lease is scaled once per decision, never past its rule, and no card is held twice."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
from django.db import connections
from django.utils import timezone

from scheduler import elastic, services
from scheduler.models import Allocation, LeaseEvent, ScalingRule
from tests.factories import GpuModelFactory, OrganizationFactory, ProviderFactory, online_server
from tests.scheduler.test_concurrency import overlapping_pairs
from tests.support.db import own_connection

RUNNERS = 6


def together(calls) -> list:
    """Run each call in its own thread and connection, all released at once; their results (or exceptions)."""
    results: list = [None] * len(calls)
    start = threading.Barrier(len(calls))

    def run(index: int) -> None:
        own_connection()
        try:
            start.wait()
            results[index] = calls[index]()
        except Exception as exc:  # noqa: BLE001 - returned, then asserted on
            results[index] = exc
        finally:
            connections["default"].close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


@pytest.mark.django_db(transaction=True)
def test_racing_beat_runs_scale_each_lease_once():
    provider, model = ProviderFactory(), GpuModelFactory()
    for index in range(3):
        online_server(organization=provider, gpu_model=model, gpus=8, name=f"elastic-race-{index}")
    customer = OrganizationFactory()
    rule = {"min_gpus": 1, "max_gpus": 8, "queue_depth_per_gpu": 1, "step_up": 3, "cooldown_seconds": 300}
    leases = [services.lease_create(org=customer, plan="card_hour", gpu_count=1, scaling=dict(rule)) for _ in range(4)]
    for lease in leases:
        elastic.queue_depth_report(lease, 8)
    now = timezone.now()

    results = together([lambda: elastic.scale_leases(now)] * RUNNERS)

    assert not [r for r in results if isinstance(r, Exception)], results
    totals = Counter()
    for result in results:
        totals.update(result)
    assert totals["scaled"] == len(leases)  # each lease once, by whichever run locked it first
    for lease in leases:
        assert LeaseEvent.objects.filter(lease=lease, kind="scaled").count() == 1
        assert Allocation.objects.filter(lease=lease, period__endswith__isnull=True).count() == 4
        assert ScalingRule.objects.get(lease=lease).last_scaled_at == now
    assert overlapping_pairs() == 0


@pytest.mark.django_db(transaction=True)
def test_a_customers_resize_racing_the_job_leaves_one_consistent_count():
    provider, model = ProviderFactory(), GpuModelFactory()
    online_server(organization=provider, gpu_model=model, gpus=8, name="elastic-race-resize")
    customer = OrganizationFactory()
    lease = services.lease_create(
        org=customer,
        plan="card_hour",
        gpu_count=2,
        scaling={"min_gpus": 1, "max_gpus": 6, "queue_depth_per_gpu": 1, "step_up": 4, "cooldown_seconds": 0},
    )
    elastic.queue_depth_report(lease, 6)

    results = together([lambda: elastic.scale_leases(), lambda: services.lease_resize(lease=lease, gpu_count=3)])

    assert not [r for r in results if isinstance(r, Exception)], results
    held = Allocation.objects.filter(lease=lease, period__endswith__isnull=True).count()
    lease.refresh_from_db()
    assert held == lease.gpu_count and held in {3, 6}
    # Whatever the order, the next run brings it to what the rule wants.
    elastic.scale_leases()
    assert Allocation.objects.filter(lease=lease, period__endswith__isnull=True).count() == 6
    assert overlapping_pairs() == 0
