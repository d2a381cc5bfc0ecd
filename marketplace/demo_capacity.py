"""The demo's elastic lease and its broker (issue 20), made by seed_demo through the real services.

- Elastic: Demo Labs rents H20 cards by the hour on bob-h20-01 with a utilisation rule (ELASTIC_RULE: 1 to 4
  cards, target 70 %). Its workload's cards read the load curve `manage.py dev` gives that server's simulated
  agent (the server's `load_curve` in seed_demo: busy a quarter of an hour, quiet a quarter of an hour, over and
  over), so the beat's `scale_leases` grows and shrinks it while the demo runs. With the demo's past, the lease is
  made some hours ago and the rule has already moved it (`elastic_past`): the agent's reports at each step (through
  the agent API's ingest, as a spooled report sent late) and the beat job run at that moment, so the lease page's
  chart and scaling events show steps at once.
- Broker: Lanting Compute Brokers (a prepaid customer, broker@suanli.local) holds one H100 server by the month and
  publishes a resale offer of its cards by the card-hour (`scheduler.resale.resale_offer_create`); Demo Labs rents
  two of them through that offer, so /broker/ shows a book and search shows the broker as a seller.

Each piece is made once, looked up by what identifies it: the elastic lease by Demo Labs having had a lease with a
scaling rule, the broker's contract by the broker having had a lease, the offer by the broker having had a resale
offer, the rental by Demo Labs having had a lease on one of the broker's offers.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from decimal import Decimal

from accounts.models import Organization, User
from billing.invoicing import period_containing
from billing.metering import metered_until
from inventory import telemetry
from inventory.models import GpuModel, Offer, Server
from marketplace import demo_history
from scheduler import elastic
from scheduler.models import Lease, LeaseState, ScalingRule
from scheduler.resale import resale_offer_create
from workloads import services as workloads_services
from workloads.agent_channel import parse_workload_report, reported_states_apply
from workloads.models import SshKey, Template, Workload

ELASTIC_SERVER = ("Bob IDC", "bob-h20-01")
ELASTIC_MODEL = "h20-96gb"
ELASTIC_TEMPLATE = "pytorch-jupyter"
ELASTIC_RULE = {"min_gpus": 1, "max_gpus": 4, "target_utilization_pct": 70, "cooldown_seconds": 300}
# The simulated agent's load curve for the elastic lease's server (`suanli-agent --load-curve`, agents/sim_load.py):
# 95 % for a quarter of an hour, 30 % for the next, repeated; the rule grows to 4 cards, then back to 1.
ELASTIC_LOAD_CURVE = "0:95,900:95,901:30,1800:30,repeat"
# The rule's past, before now: the utilisation the agent reported in the minutes before each beat run (the step down
# within the last hour, the range the lease page's chart shows first).
ELASTIC_PAST_START = timedelta(hours=5)
ELASTIC_PAST_STEPS = ((timedelta(hours=4), 95), (timedelta(hours=3, minutes=20), 92), (timedelta(minutes=40), 28))

BROKER_NAME = "Lanting Compute Brokers"
BROKER_EMAIL = "broker@suanli.local"
BROKER_MODEL = "h100-sxm5-80gb"
BROKER_DAYS = 30
BROKER_PRICE = Decimal("2.7900")  # USD a card-hour, on demand (its server costs it some 2.34 a card-hour)
BROKER_SPOT_PRICE = Decimal("1.7900")  # interruptible
RENTED_FROM_BROKER = 2
# With the demo's past, the contract starts this long ago (the offer a third of the way on, the rental half-way).
BROKER_PAST = timedelta(days=3)


def _workload(owner: User, template: str) -> dict:
    public = Template.objects.unscoped("public templates have no owner").get(organization=None, slug=template)
    keys = list(SshKey.objects.filter(user=owner).values_list("pk", flat=True))
    return {"template": public.pk, "ssh_keys": keys}


def workloads_running(lease: Lease, at: datetime) -> None:
    """The lease's workloads reported running at `at` by their servers' agents (the agent API's workload report), as
    the simulated agents would have: a card-hour lease made in the past is then charged from `at` and not failed
    by the start timeout (workloads.checks) once the beat runs."""
    by_server: dict[int, list[int]] = {}
    for workload in Workload.objects.filter(lease=lease, started_at__isnull=True):
        by_server.setdefault(workload.server_id, []).append(workload.pk)
    for server_id, ids in sorted(by_server.items()):
        payload = {"workloads": [{"id": pk, "state": "running"} for pk in ids]}
        report = {**parse_workload_report(payload), "sent_at": at.isoformat()}
        with demo_history.clock_at(at):
            reported_states_apply(server=Server.objects.get(pk=server_id), report=report, now=at)


def has_elastic(org: Organization) -> bool:
    return ScalingRule.objects.filter(lease__organization=org).exists()


def elastic_lease(org: Organization, owner: User, at: datetime) -> Lease:
    """Demo Labs' elastic H20 lease, made at `at` with one card and its rule, running a workload."""
    provider, name = ELASTIC_SERVER
    server = Server.objects.get(organization__name=provider, name=name, organization__kind=Organization.Kind.PROVIDER)
    with demo_history.clock_at(at):
        return workloads_services.lease_create(
            org=org,
            user=owner,
            workload=_workload(owner, ELASTIC_TEMPLATE),
            plan="card_hour",
            gpu_count=1,
            gpu_model=GpuModel.objects.get(slug=ELASTIC_MODEL),
            server=server,
            scaling=dict(ELASTIC_RULE),
            now=at,
        )


def past_fits(now: datetime) -> bool:
    """Whether the elastic lease's past fits in this month after the meter's watermark (not in the first hours)."""
    start = now - ELASTIC_PAST_START
    watermark = metered_until()
    return start >= period_containing(now).start and (watermark is None or watermark < start)


def elastic_past(org: Organization, owner: User, now: datetime, say: Callable[[str], None]) -> Lease:
    """The elastic lease made ELASTIC_PAST_START ago, then each of ELASTIC_PAST_STEPS: its cards' utilisation
    reported by the agent in the two minutes before, and the beat job's `scale_lease` at that moment."""
    telemetry.ensure_partitions(today=now.date())  # the raw samples' days (the agent API's ingest writes there)
    lease = elastic_lease(org, owner, now - ELASTIC_PAST_START)
    workloads_running(lease, now - ELASTIC_PAST_START + timedelta(minutes=1))
    for before, utilization in ELASTIC_PAST_STEPS:
        at = now - before
        held = list(lease.allocations.filter(period__contains=at).select_related("gpu", "server"))
        for ago in (timedelta(minutes=2), timedelta(minutes=1)):
            for allocation in held:
                demo_history._report(allocation.server, allocation.gpu, at - ago, now, utilization_pct=utilization)
        with demo_history.clock_at(at):
            outcome = elastic.scale_lease(lease.pk, now=at)
        lease.refresh_from_db()
        workloads_running(lease, at + timedelta(minutes=1))
        say(f"  {at:%H:%M}: the elastic lease {lease.pk} at {utilization} % was {outcome}: {lease.gpu_count} cards")
    return lease


def broker_since(now: datetime) -> datetime:
    """When the broker's contract starts with the demo's past: BROKER_PAST ago when that is in this month after the
    meter's watermark, else now."""
    since = now - BROKER_PAST
    watermark = metered_until()
    fits = since >= period_containing(now).start and (watermark is None or watermark < since)
    return since if fits else now


def broker_contract(broker: Organization, owner: User, now: datetime) -> Lease | None:
    """The broker's server-month contract on one whole H100 server (once: never for a broker that had a lease)."""
    if Lease.objects.filter(organization=broker).exists():
        return Lease.objects.filter(organization=broker, plan="server_month", state=LeaseState.ACTIVE).first()
    with demo_history.clock_at(now):
        return workloads_services.lease_create(
            org=broker,
            user=owner,
            plan="server_month",
            servers=1,
            gpu_model=GpuModel.objects.get(slug=BROKER_MODEL),
            end_at=now + timedelta(days=BROKER_DAYS),
            now=now,
        )


def broker_offer(broker: Organization, contract: Lease | None, now: datetime) -> Offer | None:
    """The broker's resale offer of its contract's cards by the card-hour (once per broker)."""
    offer = Offer.objects.filter(organization=broker, is_resale=True).order_by("pk").first()
    if offer is not None or contract is None:
        return offer
    with demo_history.clock_at(now):
        return resale_offer_create(
            org=broker,
            lease=contract,
            prices={"card_hour": BROKER_PRICE},
            interruptible_prices={"card_hour": BROKER_SPOT_PRICE},
            now=now,
        )


def broker_rental(
    renter: Organization, owner: User, offer: Offer | None, now: datetime, running_at: datetime | None = None
) -> Lease | None:
    """The renter's card-hour lease on the broker's offer, running a workload (once per renter and broker); made in
    the past, its workload reported running at `running_at`."""
    if offer is None or Lease.objects.filter(organization=renter, offer__organization=offer.organization).exists():
        return None
    with demo_history.clock_at(now):
        rental = workloads_services.lease_create(
            org=renter,
            user=owner,
            workload=_workload(owner, ELASTIC_TEMPLATE),
            plan="card_hour",
            gpu_count=RENTED_FROM_BROKER,
            offer=offer,
            now=now,
        )
    if running_at is not None:
        workloads_running(rental, running_at)
    return rental
