"""How fast does the scheduler allocate, next to a bare `SELECT ... FOR UPDATE SKIP LOCKED` claim?

    .venv/bin/python bench/allocate.py                          # 1,000 servers x 8 cards, 16 clients, 3 runs
    .venv/bin/python bench/allocate.py --servers 100 --leases 300 --runs 1      # a quick look

Its own database (BENCH_SCHED_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_bench_sched), created
when missing
and migrated. Per run, `--clients` forked processes, each on its own connection, share `--leases` requests of 1-4 cards:
- service: `scheduler.services.lease_create` (best fit, skip-locked claims, events) — what the API calls;
- raw SQL: one statement per request inserting the lease row and claiming the same number of free, offered cards
  with `SELECT ... FROM inventory_gpu ... ORDER BY id LIMIT n FOR UPDATE OF g SKIP LOCKED` straight into
  allocations at the offer's price (no placement rules, no events), retried when a card committed by another
  client after its snapshot trips the exclusion constraint: the floor the service is compared with.
Then the same again after 10 closed past allocations per card have been added (history), to show that allocation
time does not grow with the number of past allocations. Medians of `--runs` runs and ratios are printed.

It measures what production runs: `DJANGO_DEBUG` off (its own throwaway secret key, console e-mail allowed, no SSL
redirect), whatever the shell exports; `--debug-cursor` runs with `DJANGO_DEBUG=1` instead (Django's debug cursor
formats and records every statement), as the figures of bench/README.md before 2026-12-08 were measured.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import statistics
import sys
import time
from decimal import Decimal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
# Its own database always (BENCH_SCHED_DATABASE_URL), never a DATABASE_URL exported for the site or the tests:
# the bench truncates leases.
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_SCHED_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/suanli_bench_sched"
)
os.environ["DB_POOL"] = "0"  # forked clients open their own connections
# Production's settings (DJANGO_DEBUG off), whatever the shell exports for the tests: with DEBUG on, Django wraps every
# cursor in a debug wrapper that formats and logs each statement, which the service (9 statements) pays and the raw
# claim (1) hardly does. `--debug-cursor` measures with it, as the rows of bench/README.md before 2026-12-08 did.
DEBUG_CURSOR = "--debug-cursor" in sys.argv
os.environ["DJANGO_DEBUG"] = "1" if DEBUG_CURSOR else "0"
if not DEBUG_CURSOR:
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-allocate-" + "x" * 50)  # nothing is signed here
    os.environ["SUANLI_ALLOW_CONSOLE_EMAIL"] = "1"  # no mail is sent
    os.environ["SECURE_SSL_REDIRECT"] = "0"
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Postpaid without a credit limit, as every bench server (bench/_common.server_env): placement is measured alone.
os.environ.setdefault("DEFAULT_PAYMENT_MODE", "postpaid")


def ensure_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def setup_world(servers: int) -> tuple[int, int]:
    from django.core.management import call_command
    from django.db import connection

    from accounts.models import Organization
    from inventory.models import Gpu, GpuModel, Offer, Server

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:  # CASCADE: billing rows that point at allocations (none in this database)
        cursor.execute("TRUNCATE scheduler_leaseevent, scheduler_allocation, scheduler_lease CASCADE")
    provider, _ = Organization.objects.get_or_create(name="bench provider", defaults={"kind": "provider"})
    customer, _ = Organization.objects.get_or_create(name="bench customer", defaults={"kind": "customer"})
    model = GpuModel.objects.order_by("id").first()
    have = Server.objects.filter(organization=provider).count()
    if have != servers:
        Offer.objects.filter(organization=provider).delete()
        Gpu.objects.filter(server__organization=provider).delete()
        Server.objects.filter(organization=provider).delete()
        rows = Server.objects.bulk_create(
            Server(
                organization=provider,
                name=f"bench-{i:05d}",
                region="bench",
                gpu_model=model,
                gpu_count=8,
                cpu_cores=128,
                ram_gb=2048,
                disk_gb=30000,
                status="online",
            )
            for i in range(servers)
        )
        Gpu.objects.bulk_create(
            Gpu(server=s, index=i, uuid=f"BENCH-{s.pk}-{i}", name=model.name) for s in rows for i in range(8)
        )
    # The scheduler places leases only on cards with a live offer for the plan.
    listed = Offer.objects.live().values("server_id")
    unlisted = Server.objects.filter(organization=provider).exclude(pk__in=listed)
    Offer.objects.bulk_create(
        Offer(organization=provider, server=s, currency="USD", card_hour_price=Decimal("2.5")) for s in unlisted
    )
    # Fresh rows: plan with their real counts, not autovacuum's later guess. The organisations and capacity rows too:
    # a two-row organisation table is never analysed by autovacuum, and without its statistics PostgreSQL guesses
    # that 1 in 130 servers joins the provider and reads every server's capacity row and sorts them instead of
    # walking the best-fit index (0.2 ms becomes 160-270 ms at 12,500 servers).
    with connection.cursor() as cursor:
        cursor.execute(
            "ANALYZE inventory_server, inventory_gpu, inventory_offer, scheduler_lease, scheduler_allocation, "
            "accounts_organization, scheduler_capacity, inventory_gpumodel"
        )
    return provider.pk, customer.pk


def reset_leases() -> None:
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM scheduler_leaseevent")
        cursor.execute("DELETE FROM scheduler_allocation WHERE upper_inf(period) OR upper(period) > now()")
        cursor.execute(
            "DELETE FROM scheduler_lease WHERE NOT EXISTS (SELECT 1 FROM scheduler_allocation a "
            "WHERE a.lease_id = scheduler_lease.id)"
        )


def add_history(per_card: int, customer_id: int) -> int:
    """`per_card` closed allocations in the past on every card (one old lease holds them)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute(
            "INSERT INTO scheduler_lease (organization_id, plan, state, interruptible, region, gpu_count, "
            "delivered_pflops, shortfall_gpus, start_at, end_at, created_at, ended_at, currency, unit_price, "
            "price_book, host_access, runtime, end_reason) VALUES (%s, 'card_hour', 'ended', false, '', 0, 0, 0, "
            "now() - interval '400 days', now() - interval '1 day', now(), now(), 'USD', 2.5, '{}', false, '', "
            "'customer') RETURNING id",
            [customer_id],
        )
        lease_id = cursor.fetchone()[0]
        cursor.execute(
            "INSERT INTO scheduler_allocation (lease_id, gpu_id, server_id, period, close_reason, unit_price, units) "
            "SELECT %s, g.id, g.server_id, tstzrange(now() - (k + 2) * interval '1 day', "
            "now() - (k + 1) * interval '1 day' - interval '1 hour', '[)'), 'ended', 2.5, 1 "
            "FROM inventory_gpu g CROSS JOIN generate_series(1, %s) k",
            [lease_id, per_card],
        )
        cursor.execute("ANALYZE scheduler_allocation")
        cursor.execute("SELECT count(*) FROM scheduler_allocation")
        return cursor.fetchone()[0]


RAW_CLAIM = """
WITH lease AS (
  INSERT INTO scheduler_lease (organization_id, plan, state, interruptible, region, gpu_count, delivered_pflops,
                               shortfall_gpus, start_at, created_at, currency, unit_price, price_book, host_access,
                               runtime, end_reason)
  VALUES (%(org)s, 'card_hour', 'active', false, '', %(n)s, 0, 0, now(), now(), 'USD', 0, '{}', false, '', '')
  RETURNING id
), cards AS (
  SELECT g.id, g.server_id, o.card_hour_price FROM inventory_gpu g
  JOIN inventory_offer o ON o.server_id = g.server_id AND o.delisted_at IS NULL AND o.card_hour_price IS NOT NULL
  WHERE g.health <> 'failed' AND NOT g.drained
    AND NOT EXISTS (SELECT 1 FROM scheduler_allocation a WHERE a.gpu_id = g.id AND a.period && tstzrange(now(), NULL))
  ORDER BY g.id LIMIT %(n)s FOR UPDATE OF g SKIP LOCKED
)
INSERT INTO scheduler_allocation (lease_id, gpu_id, server_id, period, close_reason, unit_price, units)
SELECT lease.id, cards.id, cards.server_id, tstzrange(now(), NULL, '[)'), '', cards.card_hour_price, 1
FROM lease, cards
"""


def client(kind: str, customer_id: int, sizes: list[int], out) -> None:
    import django

    django.setup()
    from django.db import IntegrityError, connection, transaction

    from accounts.errors import DomainError
    from accounts.models import Organization
    from scheduler import services

    org = Organization.objects.get(pk=customer_id)
    granted = refused = retries = 0
    started = time.perf_counter()
    for n in sizes:
        if kind == "service":
            try:
                services.lease_create(org=org, plan="card_hour", gpu_count=n)
                granted += 1
            except DomainError:
                refused += 1
        else:
            # A card allocated and committed by another client after this statement's snapshot but before its lock
            # looks free and trips the exclusion constraint: retry with a fresh snapshot, as the service does.
            while True:
                try:
                    with transaction.atomic(), connection.cursor() as cursor:
                        cursor.execute(RAW_CLAIM, {"org": customer_id, "n": n})
                        if cursor.rowcount != n:
                            raise LookupError
                    granted += 1
                    break
                except LookupError:
                    refused += 1
                    break
                except IntegrityError as exc:
                    if getattr(exc.__cause__, "sqlstate", None) != "23P01":  # only the exclusion constraint
                        raise
                    retries += 1
    out.put((granted, refused, retries, time.perf_counter() - started))
    connection.close()


def measure(kind: str, customer_id: int, leases: int, clients: int, seed: int) -> tuple[float, int, int, int]:
    from django.db import connections

    rng = random.Random(seed)
    sizes = [rng.choice([1, 1, 2, 4]) for _ in range(leases)]
    connections.close_all()
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=client, args=(kind, customer_id, sizes[i::clients], out)) for i in range(clients)]
    started = time.perf_counter()
    for proc in procs:
        proc.start()
    results = [out.get() for _ in procs]
    for proc in procs:
        proc.join()
    elapsed = time.perf_counter() - started
    granted, refused, retries = (sum(r[i] for r in results) for i in range(3))
    return granted / elapsed, granted, refused, retries


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=1000)
    parser.add_argument("--leases", type=int, default=3000)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--history", type=int, default=10, help="past allocations per card in the second phase (0: no second phase)"
    )
    parser.add_argument(
        "--debug-cursor", action="store_true", help="run with DJANGO_DEBUG=1 (its debug cursor) instead of production's"
    )
    args = parser.parse_args()

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    _, customer_id = setup_world(args.servers)
    mode = "DJANGO_DEBUG=1 (debug cursor)" if DEBUG_CURSOR else "DJANGO_DEBUG=0 (production)"
    print(f"{args.servers} servers x 8 cards, {args.leases} requests of 1-4 cards, {args.clients} clients, {mode}")
    figures: dict[str, list[float]] = {}
    phases = ["empty history", f"{args.history} past allocations per card"][: 2 if args.history else 1]
    for phase in phases:
        if phase != "empty history":
            reset_leases()
            total = add_history(args.history, customer_id)
            print(f"history added: {total} allocation rows")
        for run in range(args.runs):
            for kind in ("service", "raw"):
                reset_leases()
                rate, granted, refused, retries = measure(kind, customer_id, args.leases, args.clients, seed=run)
                figures.setdefault(f"{phase}: {kind}", []).append(rate)
                print(
                    f"  {phase:32} {kind:8} run {run + 1}: {rate:8.1f} leases/s "
                    f"({granted} granted, {refused} refused, {retries} retried on a conflict)"
                )
    reset_leases()
    med = {key: statistics.median(values) for key, values in figures.items()}
    print("\nmedians (leases/s):")
    for key, value in med.items():
        print(f"  {key:50} {value:8.1f}")
    for phase in phases:
        print(f"  {phase}: service / raw SKIP LOCKED = {med[f'{phase}: service'] / med[f'{phase}: raw']:.2f}")
    if len(phases) > 1:
        print(
            f"  service with history / without = {med[f'{phases[1]}: service'] / med[f'{phases[0]}: service']:.2f}"
            f"  (raw: {med[f'{phases[1]}: raw'] / med[f'{phases[0]}: raw']:.2f})"
        )


if __name__ == "__main__":
    main()
