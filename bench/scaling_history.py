"""What does an elastic lease's chart cost to read, next to the per-card telemetry chart of the same lease and range?

    .venv/bin/python bench/scaling_history.py                 # a day of a lease resized every 10 minutes, 3 runs
    .venv/bin/python bench/scaling_history.py --runs 1        # a quick look

Its own database (BENCH_SCALING_HISTORY_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/suanli_bench_scaling_history), created when missing and migrated; the fleet is
bench/allocate.py's (2 servers x 8 cards). One card_hour lease starts a day ago with 2 cards and is resized every
`--every` minutes through 2, 4, 6, 8, 6, 4, 2, ... (`scheduler.services.lease_resize` at each moment), and every card
it held has a raw sample every 10 s while it held it, rolled up into the 1-minute table as the beat job would.

Per run, alternating, `--requests` reads each of:
- baseline: `scheduler.selectors.lease_telemetry` (the per-card series behind the lease page's telemetry charts);
- history: `scheduler.elastic_history.lease_scaling_history` (the mean per bucket of the cards held, in one query over
  all the held windows, plus the cards held as steps from the allocations, and the resizes),
over the last hour (raw samples, 10 s steps) and the whole day (1-minute roll-ups, 300 s steps). Medians of the
runs' median milliseconds, and the ratio history / baseline.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Its own database always, never a DATABASE_URL exported for the site or the tests: the bench truncates leases.
os.environ["BENCH_SCHED_DATABASE_URL"] = os.environ.get(
    "BENCH_SCALING_HISTORY_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/suanli_bench_scaling_history"
)
import allocate  # noqa: E402 (the bench folder is not a package; the environment first)

COUNTS = [2, 4, 6, 8, 6, 4]


def make_lease(customer_id: int, start, every: timedelta, now) -> int:
    from accounts.models import Organization
    from scheduler import services

    customer = Organization.objects.get(pk=customer_id)
    lease = services.lease_create(org=customer, plan="card_hour", gpu_count=2, now=start)
    step, at = 1, start + every
    while at < now:
        services.lease_resize(lease=lease, gpu_count=COUNTS[step % len(COUNTS)], now=at)
        step, at = step + 1, at + every
    return lease.pk


def add_telemetry(lease_id: int, now) -> int:
    """A sample every 10 s of every card the lease held, while it held it; then the 1-minute roll-up of the day."""
    from django.db import connection, transaction

    from inventory import telemetry
    from scheduler.models import Allocation

    telemetry.ensure_partitions()
    with connection.cursor() as cursor:
        for table in (telemetry.RAW, telemetry.ONE_MINUTE, telemetry.ONE_HOUR):
            cursor.execute(f"TRUNCATE {table}")  # noqa: S608 (our table names)
    rows = []
    for allocation in Allocation.objects.filter(lease_id=lease_id):
        at, end = allocation.period.lower, allocation.period.upper or now
        k = 0
        while at < end:
            rows.append(
                (at, allocation.gpu_id, allocation.server_id, 40 + (k % 50), 1000, 60.0, 300.0, 1400, 0, 0, "{}")
            )
            at, k = at + timedelta(seconds=10), k + 1
    with transaction.atomic():
        telemetry.copy_samples(rows)
    with transaction.atomic(), connection.cursor() as cursor:
        start = min(r[0] for r in rows).replace(second=0, microsecond=0)
        cursor.execute(telemetry._ROLLUP_1M.format(server_filter=""), {"start": start, "end": now})
        cursor.execute(f"ANALYZE {telemetry.RAW}, {telemetry.ONE_MINUTE}, scheduler_allocation, scheduler_leaseevent")
    return len(rows)


def timed(read, requests: int) -> float:
    samples = []
    for _ in range(requests):
        t0 = time.perf_counter()
        read()
        samples.append((time.perf_counter() - t0) * 1000)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--every", type=int, default=10, help="minutes between resizes (default 10)")
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    allocate.ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.utils import timezone

    from scheduler.elastic_history import lease_scaling_history
    from scheduler.models import Lease
    from scheduler.selectors import lease_telemetry

    _, customer_id = allocate.setup_world(2)
    now = timezone.now().replace(microsecond=0)
    started = time.perf_counter()
    lease_id = make_lease(customer_id, now - timedelta(days=1), timedelta(minutes=args.every), now)
    samples = add_telemetry(lease_id, now)
    lease = Lease.objects.get(pk=lease_id)
    resizes = lease.events.filter(kind="resized").count()
    took = time.perf_counter() - started
    print(f"one lease, {resizes} resizes over a day, {samples} raw samples (set up in {took:.0f} s)")
    ranges = {"hour": (now - timedelta(hours=1), 10), "day": (now - timedelta(days=1), 300)}
    figures: dict[str, list[float]] = {f"{r}_{k}": [] for r in ranges for k in ("baseline", "history")}
    for run in range(args.runs):
        for name, (since, step) in ranges.items():
            query = {"since": since, "until": now, "step": step, "now": now}
            history = lease_scaling_history(lease=lease, **query)
            assert history["utilization"] and len(history["gpus"]) > 2, "the chart has data"
            figures[f"{name}_baseline"].append(timed(lambda q=query: lease_telemetry(lease=lease, **q), args.requests))
            figures[f"{name}_history"].append(
                timed(lambda q=query: lease_scaling_history(lease=lease, **q), args.requests)
            )
        print(f"run {run + 1}: " + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in figures.items()))
    result: dict = {"resizes": resizes, "raw_samples": samples}
    for name in ranges:
        base, hist = figures[f"{name}_baseline"], figures[f"{name}_history"]
        result[name] = {
            "baseline_ms": round(statistics.median(base), 1),
            "history_ms": round(statistics.median(hist), 1),
            "ratio": round(statistics.median(h / b for h, b in zip(hist, base, strict=True)), 2),
        }
    result["runs"] = {k: [round(v, 1) for v in values] for k, values in figures.items()}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
