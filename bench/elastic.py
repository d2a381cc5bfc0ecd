"""What does the scaling beat job cost per elastic lease, next to the bare locked pass over the same leases?

    .venv/bin/python bench/elastic.py                         # 200 servers x 8 cards, 500 elastic leases, 3 runs
    .venv/bin/python bench/elastic.py --leases 100 --runs 1   # a quick look

Its own database (BENCH_ELASTIC_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_bench_elastic),
created when missing and migrated; the fleet is bench/allocate.py's. `--leases` card_hour leases of 1-4 cards are made
with `scheduler.services.lease_create`, each with a utilisation rule (1 to 8 cards, target 60 %), and every card
they hold gets a sample every 10 s over the last five minutes in the raw telemetry table (as agents report), at a
utilisation inside the rule's bands, so a pass holds every lease (the steady state of the every-minute job). Then,
per run, alternating:
- floor: for each lease, one transaction that locks its row (skip-locked) and its rule and writes the rule's
  `evaluated_at`: what any per-lease locked pass must do;
- job: `scheduler.elastic.scale_leases`: the same locks, the cards held, their mean utilisation over the window from
  the raw samples, the price, the decision, and the rule's state written.
Medians of `--runs` runs of the per-lease milliseconds are printed with the ratio job / floor, and the leases a
one-minute beat interval could follow at that pace.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Its own database always, never a DATABASE_URL exported for the site or the tests: the bench truncates leases.
os.environ["BENCH_SCHED_DATABASE_URL"] = os.environ.get(
    "BENCH_ELASTIC_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/suanli_bench_elastic"
)
import allocate  # noqa: E402 (the bench folder is not a package; the environment first)

RULE = {"min_gpus": 1, "max_gpus": 8, "target_utilization_pct": 60, "cooldown_seconds": 300}


def make_leases(customer_id: int, count: int, seed: int) -> list[int]:
    from accounts.models import Organization
    from scheduler import services

    customer = Organization.objects.get(pk=customer_id)
    rng = random.Random(seed)
    return [
        services.lease_create(org=customer, plan="card_hour", gpu_count=rng.randint(1, 4), scaling=dict(RULE)).pk
        for _ in range(count)
    ]


def add_telemetry(lease_ids: list[int], now) -> int:
    """A sample every 10 s over the last five minutes for every card the leases hold, at 50-65 % (inside the bands
    of a 60 % target: the job holds)."""
    from inventory import telemetry
    from scheduler.models import Allocation

    telemetry.ensure_partitions()
    cards = list(Allocation.objects.filter(lease_id__in=lease_ids).values_list("gpu_id", "server_id"))
    rng = random.Random(1)
    rows = [
        (now - timedelta(seconds=10 * k + 1), gpu, server, rng.uniform(50, 65), 1000, 60.0, 300.0, 1400, 0, 0, "{}")
        for gpu, server in cards
        for k in range(30)
    ]
    from django.db import transaction

    with transaction.atomic():
        telemetry.copy_samples(rows)
    return len(rows)


def floor_pass(lease_ids: list[int], now) -> None:
    from django.db import transaction

    from scheduler.models import Lease, ScalingRule

    for lease_id in lease_ids:
        with transaction.atomic():
            lease = Lease.objects.select_for_update(skip_locked=True).filter(pk=lease_id, state="active").first()
            rule = ScalingRule.objects.select_for_update().get(lease=lease)
            rule.evaluated_at = now
            rule.save(update_fields=["evaluated_at"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=200)
    parser.add_argument("--leases", type=int, default=500)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    allocate.ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.db import connection
    from django.utils import timezone

    from scheduler import elastic

    _, customer_id = allocate.setup_world(args.servers)
    started = time.perf_counter()
    lease_ids = make_leases(customer_id, args.leases, seed=7)
    samples = add_telemetry(lease_ids, timezone.now())
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE scheduler_lease, scheduler_allocation, scheduler_scalingrule, inventory_gpusample")
    print(
        f"{args.servers} servers x 8 cards, {len(lease_ids)} elastic leases, {samples} raw samples "
        f"(set up in {time.perf_counter() - started:.0f} s)"
    )
    figures: dict[str, list[float]] = {"floor": [], "job": []}
    for run in range(args.runs):
        now = timezone.now()
        t0 = time.perf_counter()
        floor_pass(lease_ids, now)
        figures["floor"].append((time.perf_counter() - t0) * 1000 / len(lease_ids))
        t0 = time.perf_counter()
        counts = elastic.scale_leases(now)
        figures["job"].append((time.perf_counter() - t0) * 1000 / len(lease_ids))
        assert counts["held"] == len(lease_ids), counts  # every lease evaluated, none resized
        print(f"run {run + 1}: floor {figures['floor'][-1]:.2f} ms/lease, job {figures['job'][-1]:.2f} ms/lease")
    floor, job = statistics.median(figures["floor"]), statistics.median(figures["job"])
    ratios = [j / f for j, f in zip(figures["job"], figures["floor"], strict=True)]
    result = {
        "leases": len(lease_ids),
        "floor_ms_per_lease": round(floor, 2),
        "job_ms_per_lease": round(job, 2),
        "ratio": round(statistics.median(ratios), 2),
        "leases_per_minute_at_job_pace": int(60_000 / job),
        "runs": {name: [round(v, 2) for v in values] for name, values in figures.items()},
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
