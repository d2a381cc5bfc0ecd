"""How fast is offer search at 12,500 servers (100,000 cards), next to the raw SQL query behind it?

    .venv/bin/python bench/search.py                          # 12,500 servers x 8 cards, 40 requests per query
    .venv/bin/python bench/search.py --servers 1000 --requests 20      # a quick look

Its own database (BENCH_SEARCH_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_bench_search),
created and migrated when missing; the fleet (servers of several catalogue models in several regions, each listed
with a live offer; a fifth of the cards held by leases) is built once with bulk inserts and kept for later runs.
Per query (a few typical searches), in this process through Django's test client (the whole view: middleware,
forms, selectors, templates or serializers; no network):
- page: GET /offers/?...      (the storefront page, rendered)
- API:  GET /api/v1/offers/?... (the public search API, JSON)
- raw SQL: the very statements the page's queryset sends (count and the first page), run on a psycopg cursor.
- API SQL: the API's own statements (captured the same way from GET /api/v1/offers/), run on a psycopg cursor: what
  the API's database work alone costs (shown beside raw SQL, which stays the baseline of both ratios).
Medians and p95 of `--requests` runs each, and the ratios page/raw and API/raw, are printed.

It measures what production runs: DJANGO_DEBUG off by default (no debug cursor logging every statement), with the
settings production needs set here for this process (a random DJANGO_SECRET_KEY, SUANLI_ALLOW_CONSOLE_EMAIL=1,
SECURE_SSL_REDIRECT=0 for the test client's plain http, STATIC_MANIFEST=0 as a checkout has no collectstatic);
DJANGO_DEBUG=1 in the environment measures the development set-up instead.
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import time
import warnings
from datetime import timedelta
from decimal import Decimal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_SEARCH_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/suanli_bench_search"
)
os.environ["DB_POOL"] = "0"
os.environ.setdefault("DJANGO_DEBUG", "0")
if os.environ["DJANGO_DEBUG"].strip().lower() not in ("1", "true", "yes", "on"):
    # What production sets, for this process alone (the docstring).
    os.environ.setdefault("DJANGO_SECRET_KEY", secrets.token_urlsafe(50))
    os.environ.setdefault("SUANLI_ALLOW_CONSOLE_EMAIL", "1")
    os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
    os.environ.setdefault("STATIC_MANIFEST", "0")
    warnings.filterwarnings("ignore", message="No directory at")  # whitenoise: no collectstatic in a checkout
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

QUERIES = {
    "cheapest card-hour, 2+ free": "plan=card_hour&min_gpus=2&ordering=price",
    "one model, one region": "gpu_model={model}&region=cn-east-1&plan=card_hour&ordering=price",
    "nvlink, max price, CNY": "interconnect=nvlink&plan=card_hour&max_price=20&currency=CNY&ordering=price",
    "reliable, most free": "min_reliability={reliability}&ordering=-gpus_free",
}
REGIONS = ["cn-east-1", "cn-north-1", "cn-south-1", "cn-west-1", "ap-southeast-1"]


def ensure_database(url: str) -> None:
    import psycopg

    base, name = url.rsplit("/", 1)
    with psycopg.connect(f"{base}/postgres", autocommit=True) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'CREATE DATABASE "{name}"')


def build_fleet(servers: int) -> None:
    """Providers, servers x 8 cards, a live offer each, a fifth of the cards leased now (bulk inserts)."""
    from django.core.management import call_command
    from django.db import connection, transaction
    from django.utils import timezone

    from accounts.models import Organization
    from inventory.models import Gpu, GpuModel, Offer, Server
    from scheduler.models import Allocation, Lease
    from scheduler.selectors import period_range

    call_command("migrate", verbosity=0)
    if Server.objects.filter(name__startswith="search-").count() == servers:
        return
    started = time.perf_counter()
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE scheduler_leaseevent, scheduler_allocation, scheduler_lease, inventory_offer, inventory_gpu, "
            "inventory_serveroutage, inventory_server CASCADE"
        )
    models = list(GpuModel.objects.filter(nvml_names__len__gt=0).order_by("id")[:6]) or list(GpuModel.objects.all())
    providers = [
        Organization.objects.get_or_create(
            name=f"search provider {i}", defaults={"kind": "provider", "currency": "USD" if i % 2 else "CNY"}
        )[0]
        for i in range(50)
    ]
    customer, _ = Organization.objects.get_or_create(name="search customer", defaults={"kind": "customer"})
    now = timezone.now()
    batch = 2500
    with transaction.atomic():
        for first in range(0, servers, batch):
            rows = Server.objects.bulk_create(
                Server(
                    organization=providers[i % len(providers)],
                    name=f"search-{i:06d}",
                    region=REGIONS[i % len(REGIONS)],
                    gpu_model=models[i % len(models)],
                    interconnect=models[i % len(models)].interconnect,
                    gpu_count=8,
                    cpu_cores=128,
                    ram_gb=2048,
                    disk_gb=30000,
                    status="online",
                    enrolled_at=now,
                    last_seen_at=now,
                )
                for i in range(first, min(first + batch, servers))
            )
            Gpu.objects.bulk_create(
                Gpu(server=s, index=k, uuid=f"GPU-search-{s.pk:07d}-{k}") for s in rows for k in range(8)
            )
            Offer.objects.bulk_create(
                Offer(
                    organization_id=s.organization_id,
                    server=s,
                    currency="USD" if s.organization_id % 2 else "CNY",
                    card_hour_price=Decimal("1.50") + Decimal(s.pk % 40) / 10,
                    server_month_price=Decimal(9000 + s.pk % 5000),
                    pflops_year_price=Decimal(150000 + s.pk % 50000),
                )
                for s in rows
            )
        lease = Lease.objects.create(
            organization=customer, plan="card_hour", state="active", currency="USD", unit_price=2, start_at=now
        )
        held = Gpu.objects.filter(index__lt=2, server__name__startswith="search-").values_list("pk", "server_id")
        Allocation.objects.bulk_create(
            (
                Allocation(
                    lease=lease,
                    gpu_id=gpu_id,
                    server_id=server_id,
                    period=period_range(now - timedelta(hours=1), None),
                    unit_price=2,
                    units=1,
                )
                for gpu_id, server_id in held.iterator()
            ),
            batch_size=5000,
        )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE")
    print(f"fleet: {servers} servers x 8 cards built in {time.perf_counter() - started:.0f} s")


def timed(call, runs: int) -> list[float]:
    call()  # warm: plans, templates, imports
    out = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        out.append((time.perf_counter() - started) * 1000)
    return sorted(out)


def p95(values: list[float]) -> float:
    return values[min(len(values) - 1, int(round(0.95 * (len(values) - 1))))]


def raw_sql(query_string: str, path: str = "/offers/"):
    """The statements the page's queryset (or, with the API's path, the API) sends (count + first page), captured
    once, then run bare."""
    import psycopg
    from django.conf import settings
    from django.db import connection
    from django.test import Client
    from django.test.utils import CaptureQueriesContext

    client = Client()
    with CaptureQueriesContext(connection) as captured:
        client.get(f"{path}?{query_string}")
    # The search's statements: the offers (and their listing rows, marketplace.models.OfferListing, where the search
    # reads those), not the session's or the form's other lookups.
    statements = [
        q["sql"]
        for q in captured.captured_queries
        if "inventory_offer" in q["sql"] or "marketplace_offerlisting" in q["sql"]
    ]
    # The session settings the site's connections carry (jit=off), so the baseline differs by the framework only.
    options = settings.DATABASES["default"].get("OPTIONS", {}).get("options", "")
    conn = psycopg.connect(os.environ["DATABASE_URL"], autocommit=True, options=options)

    def run() -> None:
        for sql in statements:
            conn.execute(sql).fetchall()

    return run, len(statements)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=12_500)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args(argv)
    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from django.conf import settings
    from django.test import Client

    from inventory.models import GpuModel

    build_fleet(args.servers)
    model = GpuModel.objects.filter(servers__name__startswith="search-").order_by("id").first()
    client = Client()
    debug = "on" if settings.DEBUG else "off"
    print(f"{args.servers} servers x 8 cards; {args.requests} requests per query; DEBUG {debug}; medians and p95 in ms")
    header = f"{'query':32} {'page':>15} {'API':>15} {'raw SQL':>15} {'API SQL':>15} {'page/raw':>9} {'API/raw':>8}"
    print(header)
    ratios_page, ratios_api = [], []
    for name, template in QUERIES.items():
        qs = template.format(model=model.pk if model else "", reliability="0.5")
        page = timed(lambda qs=qs: _ok(client.get(f"/offers/?{qs}")), args.requests)
        api = timed(lambda qs=qs: _ok(client.get(f"/api/v1/offers/?{qs}")), args.requests)
        run, statements = raw_sql(qs)
        raw = timed(run, args.requests)
        run_api, api_statements = raw_sql(qs, "/api/v1/offers/")
        api_sql = timed(run_api, args.requests)
        mp, ma, mr = statistics.median(page), statistics.median(api), statistics.median(raw)
        ratios_page.append(mp / mr)
        ratios_api.append(ma / mr)
        print(
            f"{name:32} {mp:7.1f} / {p95(page):5.0f} {ma:7.1f} / {p95(api):5.0f} {mr:7.1f} / {p95(raw):5.0f}"
            f" {statistics.median(api_sql):7.1f} / {p95(api_sql):5.0f}"
            f" {mp / mr:9.2f} {ma / mr:8.2f}   ({statements} statements; the API's {api_statements})"
        )
    print(f"median ratio: page/raw {statistics.median(ratios_page):.2f}, API/raw {statistics.median(ratios_api):.2f}")
    return 0


def _ok(response) -> None:
    if response.status_code != 200:
        raise SystemExit(f"{response.status_code}: {response.content[:300]!r}")


if __name__ == "__main__":
    sys.exit(main())
