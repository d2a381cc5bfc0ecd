"""What does the balance check cost a lease, next to the same lease with no check at all?

    .venv/bin/python bench/admission.py                      # 250 servers x 8 cards; held 0, 100, 1000; 3 runs
    .venv/bin/python bench/admission.py --held 0 100 --leases 40 --runs 1      # a quick look

Its own database (BENCH_ADMISSION_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_bench_admission),
created when missing and migrated. One customer already holds `--held` running one-card leases (started half an hour
ago, the meter run up to the last hour, as in a live site between two hourly meter runs). Then `--leases` one-card
`scheduler.services.lease_create` calls, one after another, alternate between two terms of the same organisation:
- baseline: postpaid without a credit limit, where admission returns at once (no balance to read);
- checked: prepaid with a balance that covers everything, so `billing.funds.admit` reads the whole standing (ledger,
  open invoices, the month's usage records, the unmetered slots of every held card, the burn) under the
  organisation's lock on every lease.
Each new lease is ended right after it is made, so the held count stays put. Medians of `--runs` runs of the per-lease
times are printed with the ratio checked / baseline for each held count.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# Its own database always, never a DATABASE_URL exported for the site or the tests: the bench truncates leases.
# bench/allocate.py, whose fleet this bench borrows, takes its database from BENCH_SCHED_DATABASE_URL when imported.
os.environ["BENCH_SCHED_DATABASE_URL"] = os.environ.get(
    "BENCH_ADMISSION_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/suanli_bench_admission"
)
import allocate  # noqa: E402 (the bench folder is not a package; the environment first)


def setup_world(servers: int) -> int:
    """The fleet of bench/allocate.py and an empty customer; the customer's id."""
    from django.db import connection

    _, customer_id = allocate.setup_world(servers)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE billing_usagerecord, billing_meterrun, billing_balanceentry, billing_billingterms, "
            "billing_fundsnotice, billing_spendlimit CASCADE"
        )
    return customer_id


def hold(customer_id: int, count: int) -> None:
    """`count` running one-card leases of the customer, from half an hour ago, on distinct cards."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("TRUNCATE scheduler_leaseevent, scheduler_allocation, scheduler_lease CASCADE")
        cursor.execute(
            "WITH cards AS (SELECT g.id, g.server_id, row_number() OVER (ORDER BY g.id) AS n FROM inventory_gpu g "
            "ORDER BY g.id LIMIT %(count)s), "
            "leases AS (INSERT INTO scheduler_lease (organization_id, plan, state, interruptible, region, gpu_count, "
            "delivered_pflops, shortfall_gpus, start_at, created_at, currency, unit_price, price_book, runtime, "
            "host_access, end_reason) SELECT %(org)s, 'card_hour', 'active', false, '', 1, 0, 0, "
            "now() - interval '30 minutes', now(), 'USD', 2.5, '{}', '', false, '' FROM cards RETURNING id), "
            "numbered AS (SELECT id, row_number() OVER (ORDER BY id) AS n FROM leases) "
            "INSERT INTO scheduler_allocation (lease_id, gpu_id, server_id, period, close_reason, unit_price, units) "
            "SELECT numbered.id, cards.id, cards.server_id, tstzrange(now() - interval '30 minutes', NULL, '[)'), '', "
            "2.5, 1 FROM numbered JOIN cards USING (n)",
            {"org": customer_id, "count": count},
        )
        cursor.execute("ANALYZE scheduler_lease, scheduler_allocation")


def terms(customer_id: int, checked: bool) -> None:
    from accounts.models import Organization
    from billing import services

    org = Organization.objects.get(pk=customer_id)
    if checked:
        services.terms_set(org=org, mode="prepaid", credit_limit=Decimal(0), currency="USD")
    else:
        services.terms_set(org=org, mode="postpaid", credit_limit=None, currency="USD")


def one_lease(customer_id: int) -> float:
    """Seconds to create one one-card lease (then ended, untimed)."""
    from accounts.models import Organization
    from scheduler import services

    org = Organization.objects.get(pk=customer_id)
    started = time.perf_counter()
    lease = services.lease_create(org=org, plan="card_hour", gpu_count=1)
    elapsed = time.perf_counter() - started
    services.lease_end(lease=lease)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=250)
    parser.add_argument("--held", type=int, nargs="+", default=[0, 100, 1000])
    parser.add_argument("--leases", type=int, default=60, help="leases timed per run (half of them checked)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if max(args.held) + 1 > args.servers * 8:
        parser.error("--held must leave cards free: raise --servers")

    allocate.ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.utils import timezone

    from accounts.models import Organization
    from billing import services
    from billing.metering import hour_floor

    customer_id = setup_world(args.servers)
    org = Organization.objects.get(pk=customer_id)
    print(f"{args.servers} servers x 8 cards; {args.leases} one-card leases a run, baseline and checked alternating")
    medians: dict[tuple[int, str], list[float]] = {}
    for held in args.held:
        hold(customer_id, held)  # its TRUNCATE ... CASCADE reaches the ledger too (lease <- credit note <- entry)
        services.adjustment_record(
            org=org, amount=Decimal("100000000"), currency="USD", reference=f"BENCH-{held}", reason="bench"
        )
        services.meter(until=hour_floor(timezone.now()) - timedelta(seconds=1))
        for run in range(args.runs):
            times: dict[str, list[float]] = {"baseline": [], "checked": []}
            for i in range(args.leases):
                kind = "checked" if i % 2 else "baseline"
                terms(customer_id, kind == "checked")
                times[kind].append(one_lease(customer_id))
            for kind, values in times.items():
                medians.setdefault((held, kind), []).append(statistics.median(values))
            print(
                f"  held {held:6}: run {run + 1}: baseline {statistics.median(times['baseline']) * 1000:7.1f} ms, "
                f"checked {statistics.median(times['checked']) * 1000:7.1f} ms a lease"
            )
    print("\nmedians (ms a lease):")
    for held in args.held:
        base = statistics.median(medians[(held, "baseline")])
        checked = statistics.median(medians[(held, "checked")])
        print(
            f"  held {held:6}: baseline {base * 1000:7.1f}, checked {checked * 1000:7.1f}, ratio {checked / base:.2f}"
        )


if __name__ == "__main__":
    main()
