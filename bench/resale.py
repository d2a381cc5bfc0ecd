"""How fast is a lease on a resale offer placed and ended, next to a plain card-hour lease in the same run?

    .venv/bin/python bench/resale.py                       # 20 servers x 8 cards, half held by a broker, 3 runs
    .venv/bin/python bench/resale.py --leases 30 --runs 1  # a quick look

Its own database (BENCH_RESALE_DATABASE_URL, default postgres://postgres@127.0.0.1:5432/suanli_bench_resale),
created when missing and migrated. A provider's `--servers` 8-card servers, each with its card-hour offer; a broker
holds half of them by the month (`server_month`) and resells each by the card-hour (scheduler/resale.py). Per run, one
process alternates `--leases` one-card leases of each kind through `scheduler.services.lease_create`:
- resale: on the resale offers in turn (allocate_resale: the contract's allocations on that server locked, the card
  inserted with `backing` set, the containment trigger checking it);
- plain (the baseline): placed by the scheduler on the provider's free servers (best fit, skip-locked claim).
Then it ends them all, alternating (`lease_end`: close_allocations locks the rows and looks for resales to close
first). Medians of `--runs` runs of leases a second and the resale/plain ratios are printed.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import sys
import time
from datetime import timedelta
from decimal import Decimal

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
os.environ["DATABASE_URL"] = os.environ.get(
    "BENCH_RESALE_DATABASE_URL", "postgres://postgres@127.0.0.1:5432/suanli_bench_resale"
)
os.environ["DB_POOL"] = "0"
os.environ.setdefault("DJANGO_DEBUG", "1")
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
# Postpaid without a credit limit (bench/_common.server_env): placement is measured alone.
os.environ.setdefault("DEFAULT_PAYMENT_MODE", "postpaid")


def setup(servers: int):
    """A fresh world: the provider's servers and offers, the broker's contract and its resale offers."""
    from django.core.management import call_command
    from django.db import connection
    from django.utils import timezone

    from accounts.models import Organization
    from inventory.models import Gpu, GpuModel, Offer, Server
    from scheduler import resale, services

    call_command("migrate", verbosity=0)
    with connection.cursor() as cursor:
        cursor.execute(
            "TRUNCATE scheduler_resale, scheduler_leaseevent, scheduler_allocation, scheduler_lease, inventory_offer,"
            " inventory_gpu, inventory_server CASCADE"
        )
    provider, _ = Organization.objects.get_or_create(name="bench provider", defaults={"kind": "provider"})
    broker, _ = Organization.objects.get_or_create(name="bench broker", defaults={"kind": "customer"})
    renter, _ = Organization.objects.get_or_create(name="bench renter", defaults={"kind": "customer"})
    model = GpuModel.objects.order_by("id").first()
    rows = Server.objects.bulk_create(
        Server(
            organization=provider,
            name=f"resale-{i:04d}",
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
        Gpu(server=s, index=i, uuid=f"RESALE-{s.pk}-{i}", name=model.name) for s in rows for i in range(8)
    )
    Offer.objects.bulk_create(
        Offer(organization=provider, server=s, currency="USD", card_hour_price=Decimal("2.5"), server_month_price=1000)
        for s in rows
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE inventory_server, inventory_gpu, inventory_offer, scheduler_capacity")
    contract = services.lease_create(
        org=broker, plan="server_month", servers=servers // 2, end_at=timezone.now() + timedelta(days=30)
    )
    held = sorted(set(contract.allocations.values_list("server_id", flat=True)))
    offers = [
        resale.resale_offer_create(org=broker, lease=contract, server_id=server_id, prices={"card_hour": Decimal("4")})
        for server_id in held
    ]
    return renter, offers


def one_run(renter, offers, leases: int, rng: random.Random) -> dict[str, float]:
    from scheduler import services

    spent = {"resale": 0.0, "plain": 0.0, "resale_end": 0.0, "plain_end": 0.0}
    made: dict[str, list] = {"resale": [], "plain": []}
    for index in range(leases):
        for kind in rng.sample(["resale", "plain"], 2):
            started = time.perf_counter()
            if kind == "resale":
                offer = offers[index % len(offers)]  # spread over the broker's servers, as the plain ones spread
                lease = services.lease_create(org=renter, plan="card_hour", gpu_count=1, offer=offer)
            else:
                lease = services.lease_create(org=renter, plan="card_hour", gpu_count=1)
            spent[kind] += time.perf_counter() - started
            made[kind].append(lease)
    for resold, plain in zip(made["resale"], made["plain"], strict=True):
        for kind, lease in rng.sample([("resale", resold), ("plain", plain)], 2):
            started = time.perf_counter()
            services.lease_end(lease=lease)
            spent[f"{kind}_end"] += time.perf_counter() - started
    return {name: leases / seconds for name, seconds in spent.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--servers", type=int, default=20)
    parser.add_argument("--leases", type=int, default=60, help="one-card leases of each kind per run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if args.leases > (args.servers // 2) * 8:
        parser.error("more leases than the broker's cards")

    sys.path.insert(0, os.path.join(REPO, "bench"))
    from _common import ensure_database

    ensure_database(os.environ["DATABASE_URL"])
    import django

    django.setup()
    from accounts.tenancy import platform_work

    rng = random.Random(7)
    results = []
    with platform_work("a bench places leases for its own organisations"):
        for run in range(args.runs):
            renter, offers = setup(args.servers)
            results.append(one_run(renter, offers, args.leases, rng))
            print(f"run {run + 1}: " + ", ".join(f"{k} {v:.1f}/s" for k, v in results[-1].items()), flush=True)
    med = {name: statistics.median(r[name] for r in results) for name in results[0]}
    print(
        f"\nleases a second (median of {args.runs}): resale {med['resale']:.1f}, plain {med['plain']:.1f}, "
        f"ratio {med['resale'] / med['plain']:.2f}; ends: resale {med['resale_end']:.1f}, "
        f"plain {med['plain_end']:.1f}, ratio {med['resale_end'] / med['plain_end']:.2f}"
    )


if __name__ == "__main__":
    main()
