"""How long does closing a month take, next to the bare SQL aggregation it cannot do without?

    .venv/bin/python bench/close_period.py                          # 10,000 leases, 1,000,000 usage records, 3 runs
    .venv/bin/python bench/close_period.py --leases 1000 --records 100000 --runs 1      # a quick look

Its own database (--database-url, else BENCH_BILLING_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/suanli_bench_billing; a DATABASE_URL exported for the tests is not followed, and a
database whose name lacks "bench" is refused, since the bench empties it), created when missing and migrated.

The month (--period, default 2026-10, platform time zone) is built once and kept while its counts still match:
500 customer organisations (one in five billed in CNY), 50 providers with 8-card servers, `--leases` leases (0.5 %
whole servers for the month, 0.2 % 10-PFLOPS contracts on two servers, the rest card_hour leases of 1-8 cards held a
few hours to two days, at their provider's price) and `--records` usage records, one per allocation and hour, made
by one `INSERT ... SELECT generate_series` (foreign-key triggers off in its transaction only:
`session_replication_role = replica`; the rows are consistent by construction) and rated in SQL (seconds x units x
price / seconds of the plan's unit, at 12 places). One lease in fifty has a card down half an hour in twenty, so its
lines get SLA credits that are charged back to its providers. A meter watermark at the month's end is stored, so
`close_period` meters only its one-hour look-back (nothing new), as it would after the hourly meter.

Per run:
- close_period: `billing.invoicing.close_period` — every customer's invoice (lines per lease/plan/price, credits,
  tax, gap-free number) and every provider's statement (commission, charge-backs);
- raw SQL: the two aggregations it needs, fetched: usage summed per organisation, currency, lease, plan and unit
  price, and per provider and currency.
Between runs the invoices, lines, statements, counters and the run's meter watermark are deleted. Finalised invoices
are protected by triggers (billing migration 0002): the reset disables them inside its own transaction, here only.
Medians of `--runs` runs, records/s and the ratio are printed.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal
from urllib.parse import urlsplit, urlunsplit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/suanli_bench_billing"
CUSTOMERS = 500
PROVIDERS = 50
PFLOPS_CONTRACT = Decimal(10)
# Prices per plan unit, USD (CNY at 7.2): per card-hour, per server-month, per PFLOPS-year.
PRICES = {"card_hour": Decimal("2.5"), "server_month": Decimal("12000"), "pflops_year": Decimal("150000")}


def ensure_database(url: str) -> None:
    import psycopg
    from psycopg import sql

    name = urlsplit(url).path.lstrip("/")
    admin = urlunsplit(urlsplit(url)._replace(path="/postgres"))
    with psycopg.connect(admin, autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


# --- the month ------------------------------------------------------------------------------------------------


def plan_leases(leases: int, records: int, hours: int, seed: int) -> list[dict]:
    """Each lease: plan, customer index, provider-side placement left to `place`, cards and hours held, such that
    the cards x hours of all leases is exactly `records` (when it can be)."""
    rng = random.Random(seed)
    whole_server = min(leases // 200, int(records * 0.3) // (8 * hours))
    contracts = min(leases // 500, int(records * 0.25) // (16 * hours))
    hourly = leases - whole_server - contracts
    left = records - (whole_server * 8 + contracts * 16) * hours
    if hourly <= 0 or left < hourly:
        raise SystemExit(f"--records {records} is too few for --leases {leases}")
    plans = [{"plan": "server_month", "cards": 8, "hours": hours} for _ in range(whole_server)]
    plans += [{"plan": "pflops_year", "cards": 16, "hours": hours} for _ in range(contracts)]
    cards = [rng.choice([1, 1, 1, 2, 2, 4, 8]) for _ in range(hourly)]
    weights = [rng.randint(24, 48) for _ in range(hourly)]
    scale = left / sum(c * w for c, w in zip(cards, weights, strict=True))
    held = [min(hours, max(1, int(w * scale))) for w in weights]
    # Whole hours were rounded down: hand out what is left an hour at a time, to single cards first.
    missing = left - sum(c * h for c, h in zip(cards, held, strict=True))
    order = sorted(range(hourly), key=lambda i: cards[i])
    while missing > 0:
        moved = False
        for i in order:
            if cards[i] <= missing and held[i] < hours:
                held[i] += 1
                missing -= cards[i]
                moved = True
                if not missing:
                    break
        if not moved:
            break
    plans += [{"plan": "card_hour", "cards": c, "hours": h} for c, h in zip(cards, held, strict=True)]
    rng.shuffle(plans)
    for n, lease in enumerate(plans):
        lease["customer"] = (n * 7919) % CUSTOMERS
    return plans


def build_month(period, leases: int, records: int, seed: int) -> None:
    from django.db import connection, transaction
    from psycopg.types.range import Range

    from accounts.models import Organization
    from inventory.models import Gpu, GpuModel, Server

    rng = random.Random(seed)
    hours = int((period.end - period.start).total_seconds()) // 3600
    plans = plan_leases(leases, records, hours, seed)
    whole = sum(1 if p["plan"] == "server_month" else 2 for p in plans if p["plan"] != "card_hour")
    hourly_card_hours = sum(p["cards"] * p["hours"] for p in plans if p["plan"] == "card_hour")
    hourly_allocations = sum(p["cards"] for p in plans if p["plan"] == "card_hour")
    # Room for the hourly leases at about 40 % use, and their gaps.
    pool_servers = -(-2 * (hourly_card_hours + 4 * hourly_allocations) // (8 * hours)) + 1
    servers_wanted = max(whole + pool_servers, PROVIDERS)
    model = GpuModel.objects.order_by("id").first()

    with connection.cursor() as cursor:  # the bench's own database: everything it made before goes
        cursor.execute(
            "TRUNCATE accounts_organization, inventory_server, inventory_gpu, scheduler_lease, scheduler_allocation, "
            "billing_usagerecord, billing_meterrun, billing_invoice, billing_invoiceline, billing_providerstatement, "
            "billing_documentcounter CASCADE"
        )
    customers = Organization.objects.bulk_create(
        Organization(name=f"bench customer {i:03d}", kind="customer", currency="CNY" if i % 5 == 0 else "USD")
        for i in range(CUSTOMERS)
    )
    providers = Organization.objects.bulk_create(
        Organization(name=f"bench provider {i:02d}", kind="provider", currency="USD") for i in range(PROVIDERS)
    )
    servers = Server.objects.bulk_create(
        Server(
            organization=providers[i % PROVIDERS],
            name=f"bench-{i:05d}",
            region="bench",
            gpu_model=model,
            gpu_count=8,
            cpu_cores=128,
            ram_gb=2048,
            disk_gb=30000,
            status="online",
        )
        for i in range(servers_wanted)
    )
    gpus = Gpu.objects.bulk_create(
        Gpu(server=s, index=i, uuid=f"BENCH-{s.pk}-{i}", name=model.name) for s in servers for i in range(8)
    )
    by_server: dict[int, list[Gpu]] = {}
    for gpu in gpus:
        by_server.setdefault(gpu.server_id, []).append(gpu)
    provider_of = {s.pk: s.organization_id for s in servers}
    # A provider's price is the list price +0..45 %; a CNY customer pays it converted.
    markup = {p.pk: Decimal(100 + 5 * (i % 10)) / 100 for i, p in enumerate(providers)}

    whole_servers = iter(servers[:whole])
    pool = [g for s in servers[whole:] for g in by_server[s.pk]]
    free_from = [0] * len(pool)  # hour of the month from which each pooled card is free
    cursor_at = 0
    lease_rows = []
    for p in plans:
        org = customers[p["customer"]]
        fx = Decimal("7.2") if org.currency == "CNY" else Decimal(1)
        if p["plan"] == "card_hour":
            for _ in range(len(pool)):  # the next run of cards (mostly on one server) free for long enough
                span = range(cursor_at, cursor_at + p["cards"])
                cursor_at = (cursor_at + p["cards"]) % (len(pool) - 8)
                start_hour = max(free_from[i] for i in span) + rng.randint(0, 6)
                if start_hour + p["hours"] <= hours:
                    break
            else:
                raise RuntimeError("no room left for a card_hour lease; the pool is sized too small")
            cards = [pool[i] for i in span]
            for i in span:
                free_from[i] = start_hour + p["hours"]
            units = [Decimal(1)] * len(cards)
        else:
            box = [next(whole_servers) for _ in range(1 if p["plan"] == "server_month" else 2)]
            cards = [g for s in box for g in by_server[s.pk]]
            start_hour = 0
            share = (PFLOPS_CONTRACT / len(cards)).quantize(Decimal("0.000000000001"))
            units = [Decimal("0.125")] * 8 if p["plan"] == "server_month" else [share] * len(cards)
        start = period.start + timedelta(hours=start_hour)
        end = start + timedelta(hours=p["hours"])
        price = (PRICES[p["plan"]] * markup[provider_of[cards[0].server_id]] * fx).quantize(Decimal("0.000001"))
        lease_rows.append((org.pk, p["plan"], start, end, org.currency, price, cards, units))
    delivered_per_card = model.fp16_tflops / 1000
    connection.ensure_connection()
    raw = connection.connection  # psycopg's own connection, for COPY
    with transaction.atomic():
        with raw.cursor() as cursor:
            cursor.execute(
                "SELECT nextval(pg_get_serial_sequence('scheduler_lease', 'id')) FROM generate_series(1, %s)",
                [len(lease_rows)],
            )
            lease_ids = [row[0] for row in cursor.fetchall()]
        allocation_rows = []
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY scheduler_lease (id, organization_id, plan, state, interruptible, region, gpu_count, "
                "servers, pflops, delivered_pflops, shortfall_gpus, start_at, end_at, created_at, ended_at, "
                "currency, price_book, unit_price, host_access, runtime, end_reason) FROM STDIN"
            ) as copy,
        ):
            for lease_id, (org_id, plan, start, end, currency, price, cards, units) in zip(
                lease_ids, lease_rows, strict=True
            ):
                copy.write_row(
                    (lease_id, org_id, plan, "ended", False, "bench", len(cards),
                     len(cards) // 8 if plan == "server_month" else None,
                     PFLOPS_CONTRACT if plan == "pflops_year" else None,
                     (delivered_per_card * len(cards)).quantize(Decimal("0.001")), 0, start, end, start, end,
                     currency, "{}", price, False, "", "")
                )  # fmt: skip
                for gpu, unit in zip(cards, units, strict=True):
                    allocation_rows.append((lease_id, gpu.pk, gpu.server_id, Range(start, end, "[)"), price, unit))
        with (
            raw.cursor() as cursor,
            cursor.copy(
                "COPY scheduler_allocation (lease_id, gpu_id, server_id, period, close_reason, unit_price, units) "
                "FROM STDIN"
            ) as copy,
        ):
            for lease_id, gpu_id, server_id, held, price, unit in allocation_rows:
                copy.write_row((lease_id, gpu_id, server_id, held, "ended", price, unit))
    month_seconds = hours * 3600
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute("SET LOCAL session_replication_role = replica")  # rows made consistent above: no FK checks
        cursor.execute(USAGE_SQL, {"month_seconds": month_seconds})
        cursor.execute(
            "INSERT INTO billing_meterrun (until, records, created_at) VALUES (%s, %s, now())",
            [period.end, cursor.rowcount],
        )
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE billing_usagerecord")
        cursor.execute("ANALYZE scheduler_lease, scheduler_allocation, inventory_server, inventory_gpu")


USAGE_SQL = """
INSERT INTO billing_usagerecord (allocation_id, lease_id, organization_id, provider_id, server_id, plan, slot_start,
                                 start, "end", seconds, down_seconds, units, unit_price, currency, quantity, amount,
                                 created_at)
SELECT a.id, a.lease_id, l.organization_id, s.organization_id, a.server_id, l.plan, h, h, h + interval '1 hour', 3600,
       d.down, a.units, a.unit_price, l.currency,
       round((3600 - d.down) * a.units / p.per, 12), round((3600 - d.down) * a.units * a.unit_price / p.per, 12), now()
FROM scheduler_allocation a
JOIN scheduler_lease l ON l.id = a.lease_id
JOIN inventory_server s ON s.id = a.server_id
CROSS JOIN LATERAL generate_series(lower(a.period), upper(a.period) - interval '1 hour', interval '1 hour') AS h
CROSS JOIN LATERAL (
    SELECT CASE WHEN l.id %% 50 = 0 AND (extract(epoch FROM h - lower(a.period))::bigint / 3600) %% 20 = 0
                THEN 1800 ELSE 0 END AS down
) AS d
CROSS JOIN LATERAL (
    SELECT CASE l.plan WHEN 'card_hour' THEN 3600 WHEN 'server_month' THEN %(month_seconds)s ELSE 31536000 END AS per
) AS p
"""


def month_is_built(period, leases: int, records: int) -> bool:
    from billing.models import MeterRun, UsageRecord
    from scheduler.models import Lease

    return (
        Lease.objects.count() == leases
        and UsageRecord.objects.filter(slot_start__gte=period.start, slot_start__lt=period.end).count() == records
        and MeterRun.objects.filter(until=period.end).exists()
    )


# --- the runs -------------------------------------------------------------------------------------------------

RESET_SQL = """
SET CONSTRAINTS ALL IMMEDIATE;
ALTER TABLE billing_invoice DISABLE TRIGGER billing_invoice_immutable;
ALTER TABLE billing_invoiceline DISABLE TRIGGER billing_invoiceline_immutable;
DELETE FROM billing_invoiceline;
DELETE FROM billing_invoice;
DELETE FROM billing_providerstatement;
DELETE FROM billing_documentcounter;
DELETE FROM billing_meterrun WHERE id <> (SELECT min(id) FROM billing_meterrun);
ALTER TABLE billing_invoiceline ENABLE TRIGGER billing_invoiceline_immutable;
ALTER TABLE billing_invoice ENABLE TRIGGER billing_invoice_immutable;
"""

BASELINE_LINES = """
SELECT organization_id, currency, lease_id, plan, unit_price,
       sum(quantity), sum(seconds), sum(down_seconds), sum(amount)
FROM billing_usagerecord WHERE slot_start >= %s AND slot_start < %s
GROUP BY organization_id, currency, lease_id, plan, unit_price
"""
BASELINE_PROVIDERS = """
SELECT provider_id, currency, sum(amount) FROM billing_usagerecord WHERE slot_start >= %s AND slot_start < %s
GROUP BY provider_id, currency
"""


def reset() -> None:
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(RESET_SQL)
    with connection.cursor() as cursor:
        cursor.execute("VACUUM ANALYZE billing_invoice, billing_invoiceline, billing_providerstatement")


def run_close_period(period) -> tuple[float, dict[str, int]]:
    from billing import invoicing

    started = time.perf_counter()
    made = invoicing.close_period(period.label, now=period.end + timedelta(days=1))
    return time.perf_counter() - started, made


def run_baseline(period) -> tuple[float, int]:
    from django.db import connection

    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(BASELINE_LINES, [period.start, period.end])
        lines = cursor.fetchall()
        cursor.execute(BASELINE_PROVIDERS, [period.start, period.end])
        cursor.fetchall()
    return time.perf_counter() - started, len(lines)


def machine() -> str:
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{len(os.sched_getaffinity(0))} CPUs ({model or platform.processor()}), load average {load}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--leases", type=int, default=10_000)
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--period", default="2026-10")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rebuild", action="store_true", help="build the month again even if it matches")
    parser.add_argument("--database-url", default=os.environ.get("BENCH_BILLING_DATABASE_URL", DEFAULT_URL))
    args = parser.parse_args()
    if "bench" not in urlsplit(args.database_url).path:
        raise SystemExit(f"refusing {args.database_url}: the bench empties its database; name it *bench*")

    os.environ["DATABASE_URL"] = args.database_url
    os.environ["DB_POOL"] = "0"
    os.environ.setdefault("DJANGO_DEBUG", "1")
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    ensure_database(args.database_url)
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    from billing import invoicing

    settings.DEBUG = False  # no query log kept in memory while timing
    call_command("migrate", verbosity=0)
    period = invoicing.period_of(args.period)
    with connection.cursor() as cursor:
        cursor.execute("SHOW server_version")
        pg_version = cursor.fetchone()[0]
    print(f"machine: {machine()}; PostgreSQL {pg_version}; Python {platform.python_version()}")
    print(f"database: {urlsplit(args.database_url).path.lstrip('/')}; platform time zone {settings.PLATFORM_TIME_ZONE}")

    if args.rebuild or not month_is_built(period, args.leases, args.records):
        started = time.perf_counter()
        build_month(period, args.leases, args.records, args.seed)
        print(f"built {args.period} in {time.perf_counter() - started:.1f} s")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*), count(DISTINCT lease_id), count(DISTINCT allocation_id), "
            "count(DISTINCT organization_id), count(DISTINCT provider_id), count(DISTINCT server_id) "
            "FROM billing_usagerecord "
            "WHERE slot_start >= %s AND slot_start < %s",
            [period.start, period.end],
        )
        records, leases, allocations, orgs, providers, servers = cursor.fetchone()
    print(
        f"{args.period}: {records:,} usage records of {leases:,} leases ({allocations:,} allocations) "
        f"for {orgs} customers on {servers:,} servers of {providers} providers"
    )

    closes, baselines = [], []
    for run in range(args.runs):
        reset()
        seconds, made = run_close_period(period)
        closes.append(seconds)
        base, groups = run_baseline(period)
        baselines.append(base)
        print(
            f"  run {run + 1}: close_period {seconds:7.2f} s ({made['invoices']} invoices, {made['statements']} "
            f"statements)   raw SQL {base:6.2f} s ({groups:,} line groups)"
        )
    reset()
    close, base = statistics.median(closes), statistics.median(baselines)
    print(f"\nmedians of {args.runs} runs:")
    print(f"  close_period         {close:8.2f} s  {records / close:12,.0f} records/s")
    print(f"  raw SQL aggregation  {base:8.2f} s  {records / base:12,.0f} records/s")
    print(f"  close_period / raw SQL = {close / base:.2f}")


if __name__ == "__main__":
    main()
