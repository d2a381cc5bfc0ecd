"""Demo data for a fresh site: staff, two providers with enrolled, online servers, three customers on the terms
real ones get, two closed months of history, and today's leases.

New organisations are prepaid by default (SUANLI_DEFAULT_PAYMENT_MODE): a lease their balance cannot cover is
refused with 402. So, before its leases are made, each demo customer gets what staff would give it: the two
prepaid ones a bank transfer received (a ledger entry with the bank's reference) that covers their demo leases for
weeks, the enterprise customer postpaid terms with a staff credit limit.

On a database where it fits (no demo lease yet, nothing metered or closed in those months), the world is made ten
days before the month before last and the demo's past follows (marketplace/demo_history.py: leases on every plan,
a failed card and its credit note, a preempted interruptible lease, both months metered and closed, invoices paid
from the balance and one left open, statements and a payout, the charts' last seven days); `--no-history` skips
it. Today's leases run a workload of a public template, so the simulated agents (`manage.py dev`) run them and
their cards read busy.

Idempotent: every object is looked up by its natural identity first (email, organisation name and owner,
server name within its organisation, the bank reference) and only created when missing: terms are set only on an
organisation that has none, leases made only for a customer that never had one, the past only once. Running it
twice changes nothing and it is safe on a database that already has data. Writes go through the services.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal

from allauth.account.models import EmailAddress
from django.conf import settings
from django.contrib.auth.hashers import make_password
from django.core.management.base import BaseCommand
from django.db import transaction
from django.utils import timezone

from accounts import services as accounts_services
from accounts.models import ApiKey, Organization, Role, User
from billing import services as billing_services
from billing.models import BillingTerms, Invoice, PaymentMode
from inventory import services as inventory_services
from inventory.models import Gpu, GpuModel, Offer, Server
from marketplace import demo_capacity, demo_history
from marketplace import services as marketplace_services
from scheduler.models import Lease
from workloads import services as workloads_services
from workloads.models import SshKey, Template

PASSWORD = "suanli-demo-pass"  # noqa: S105 (the documented demo password, printed at the end)
ADMIN_EMAIL = "admin@suanli.local"
CUSTOMER_EMAIL = "customer@suanli.local"
DEMO_KEY_NAME = "seed_demo"


@dataclass(frozen=True)
class DemoServer:
    name: str
    gpu_model: str  # catalogue slug
    cpu_cores: int
    ram_gb: int
    disk_gb: int
    network_gbps: int
    load_curve: str = ""  # the simulated agent's `--load-curve` under `manage.py dev` (empty: the jobs' own shape)


@dataclass(frozen=True)
class DemoProvider:
    name: str
    owner: str
    currency: str
    region: str
    site: str
    servers: tuple[DemoServer, ...]


@dataclass(frozen=True)
class DemoLease:
    """A lease a demo customer holds today, running a workload of a public template (so its simulated agent runs it
    and its cards read busy). `since_last_month`: with the demo's past, made on the 13th of last month instead."""

    plan: str
    gpu_model: str  # catalogue slug
    template: str  # public template slug
    gpu_count: int | None = None
    servers: int | None = None
    days: int | None = None  # a contract's term from when it is made (card-hour leases run until ended)
    since_last_month: bool = False


@dataclass(frozen=True)
class DemoCustomer:
    """A customer organisation and the terms staff gave it: prepaid with a bank transfer received (`transfer`,
    `reference`), or postpaid within a credit limit."""

    name: str
    owner: str
    currency: str
    mode: str
    leases: tuple[DemoLease, ...]
    transfer: str = ""
    reference: str = ""
    credit_limit: str = ""


CUSTOMERS = (
    # Two H100 cards by the hour: about 5 USD an hour, so 5,000 USD lasts some six weeks.
    DemoCustomer(
        name="Demo Labs",
        owner=CUSTOMER_EMAIL,
        currency="USD",
        mode=PaymentMode.PREPAID,
        transfer="5000.00",
        reference="DEMO-WIRE-DL-0001",
        leases=(DemoLease("card_hour", "h100-sxm5-80gb", "pytorch-jupyter", gpu_count=2),),
    ),
    # A university lab on four RTX 4090s by the hour: 8.80 CNY an hour against 30,000 CNY paid in.
    DemoCustomer(
        name="Qiming Research Lab",
        owner="research@suanli.local",
        currency="CNY",
        mode=PaymentMode.PREPAID,
        transfer="30000.00",
        reference="DEMO-CMB-QM-0001",
        leases=(DemoLease("card_hour", "rtx-4090-24gb", "cuda-ssh", gpu_count=4),),
    ),
    # An enterprise on a monthly invoice: a whole A800 server by the month (52,000 CNY) within its credit limit.
    DemoCustomer(
        name="Hengtai Enterprise AI",
        owner="enterprise@suanli.local",
        currency="CNY",
        mode=PaymentMode.POSTPAID,
        credit_limit="500000.00",
        leases=(DemoLease("server_month", "a800-sxm4-80gb", "cuda-ssh", servers=1, days=90, since_last_month=True),),
    ),
)


# A broker (issue 20, marketplace/demo_capacity.py): holds an H100 server by the month and resells its cards by the
# card-hour. 13,500 USD a month for the server, against 20,000 USD paid in.
BROKER = DemoCustomer(
    name=demo_capacity.BROKER_NAME,
    owner=demo_capacity.BROKER_EMAIL,
    currency="USD",
    mode=PaymentMode.PREPAID,
    transfer="20000.00",
    reference="DEMO-WIRE-LT-0001",
    leases=(),
)


DEMO_SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAILDBo6yLkItr3CMkalaEmc+Hp8eJtb8jEchskcIGYRId demo@laptop"


def _hgx(name: str, slug: str) -> DemoServer:
    return DemoServer(name, slug, cpu_cores=112, ram_gb=2048, disk_gb=30720, network_gbps=400)


def _pcie(name: str, slug: str) -> DemoServer:
    return DemoServer(name, slug, cpu_cores=64, ram_gb=512, disk_gb=7680, network_gbps=100)


PROVIDERS = (
    DemoProvider(
        name="Bob IDC",
        owner="bob@suanli.local",
        currency="USD",
        region="cn-east-1",
        site="Shanghai Jiading DC, hall 3",
        servers=(
            _hgx("bob-h100-01", "h100-sxm5-80gb"),
            _hgx("bob-h100-02", "h100-sxm5-80gb"),
            _hgx("bob-h100-03", "h100-sxm5-80gb"),
            # The elastic lease's server (marketplace/demo_capacity.py): its busy cards follow the load curve.
            DemoServer("bob-h20-01", "h20-96gb", 112, 2048, 30720, 400, load_curve=demo_capacity.ELASTIC_LOAD_CURVE),
        ),
    ),
    DemoProvider(
        name="Shenzhen Compute",
        owner="shenzhen@suanli.local",
        currency="CNY",
        region="cn-south-1",
        site="Shenzhen Nanshan DC",
        servers=(
            _hgx("szc-a800-01", "a800-sxm4-80gb"),
            _hgx("szc-a800-02", "a800-sxm4-80gb"),
            _pcie("szc-4090-01", "rtx-4090-24gb"),
            _pcie("szc-4090-02", "rtx-4090-24gb"),
        ),
    ),
)
GPUS_PER_SERVER = 8

# Demo offer prices per catalogue entry, in the provider's currency: (card_hour, server_month, pflops_year) on
# demand, then interruptible. Rough market levels of 2026, for the demo only.
DEMO_PRICES = {
    "h100-sxm5-80gb": (("2.4900", "13500", "190000"), ("1.4900", "9000", "130000")),
    "h20-96gb": (("1.1000", "6000", "210000"), ("0.6500", "4000", "150000")),
    "a800-sxm4-80gb": (("9.5000", "52000", "240000"), ("5.9000", "36000", "170000")),
    "rtx-4090-24gb": (("2.2000", "11000", "330000"), ("1.3000", "7500", "230000")),
}


# The agent simulator's model for each catalogue entry the demo uses (`manage.py dev` runs a simulated agent
# per demo server: agents/simulate.py, seeded with the server name).
SIMULATED_MODEL = {
    "h100-sxm5-80gb": "h100",
    "h20-96gb": "h20",
    "a800-sxm4-80gb": "a800",
    "rtx-4090-24gb": "rtx4090",
}


def demo_gpu_uuids(server_name: str, gpu_model_slug: str) -> list[str]:
    """The uuids the simulated agent of this demo server reports (seeded with the server name)."""
    from agents.simulate import SimulatedNVML

    simulated = SimulatedNVML(GPUS_PER_SERVER, SIMULATED_MODEL[gpu_model_slug], seed=server_name)
    return [card.uuid for card in simulated.cards]


class Command(BaseCommand):
    help = "Create demo users, organisations and enrolled servers (idempotent). Password: " + PASSWORD

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--new-token",
            action="store_true",
            help="Issue another API token for the demo customer even if one was issued before.",
        )
        parser.add_argument(
            "--site-url",
            default="",
            help="The address the site answers on, for the example printed at the end (default: SITE_URL).",
        )
        parser.add_argument(
            "--no-history",
            action="store_true",
            help="Start the demo today: no closed months, invoices, statements or telemetry history.",
        )

    def handle(self, *args, new_token: bool = False, site_url: str = "", no_history: bool = False, **options):
        now = timezone.now()
        names = [demo.name for demo in (*CUSTOMERS, BROKER)]
        why = "--no-history" if no_history else demo_history.blocker(now, names)
        if why:
            token, servers = self._present(new_token, now)
            if not Invoice.objects.filter(organization__name__in=names).exists():
                self.stdout.write(f"The demo's past is not added: {why}.")
        else:
            token, servers = self._with_history(new_token, now)
        self._report(token, (site_url or settings.SITE_URL).rstrip("/"))

    def _present(self, new_token: bool, now) -> tuple[str | None, list[Server]]:
        """The demo world, each customer's leases made today (once: never for a customer that has had one)."""
        with transaction.atomic():
            admin, customers, servers, token = self._world(new_token)
        for org, demo in customers:  # each lease in its own transaction (lease_create retries after a deadlock)
            if not Lease.objects.for_org(org).exists():
                self._leases(org, demo, now, contracts_too=True)
        self._capacity(dict(customers), now, past=False)
        billing_services.meter(until=now)
        return token, servers

    def _with_history(self, new_token: bool, now) -> tuple[str | None, list[Server]]:
        """The demo world made ten days before its first closed month, its past (marketplace/demo_history.py), then
        today's leases and the telemetry of the last days; all in one transaction, so a failure leaves nothing."""
        span = demo_history.months(now)
        with transaction.atomic():
            with demo_history.clock_at(span.start):
                admin, customers, servers, token = self._world(new_token)
            by_name = {org.name: org for org, _demo in customers}
            by_name.update({org.name: org for org in Organization.objects.filter(servers__in=servers).distinct()})
            demos = {org.name: demo for org, demo in customers}

            def contracts(org: Organization, at) -> None:
                with demo_history.clock_at(at):
                    self._leases(org, demos[org.name], at, only_since_last_month=True)

            demo_history.build(
                demo_history.Demo(
                    staff=admin,
                    orgs=by_name,
                    live_leases=contracts,
                    say=self.stdout.write,
                ),
                now,
            )
            for org, demo in customers:
                self._leases(org, demo, now)
            self._capacity(dict(customers), now, past=True)
            rows = demo_history.telemetry_history(servers, now)
            self.stdout.write(f"wrote {rows} telemetry points of the last {demo_history.TELEMETRY_DAYS} days")
            billing_services.meter(until=now)
            demo_history.servers_seen(servers, now)
        return token, servers

    def _world(self, new_token: bool):
        """Staff, customers with their terms and first bank transfer, providers with their listed servers, and the
        demo customer's API token (when it has none or --new-token)."""
        admin = self._user(ADMIN_EMAIL, staff=True)
        customer = self._user(CUSTOMER_EMAIL)
        self._ssh_key(customer)
        customers = []
        for demo in (*CUSTOMERS, BROKER):
            owner = self._user(demo.owner)
            org = self._org(
                demo.name, owner=owner, kind=Organization.Kind.CUSTOMER, currency=demo.currency, staff=admin
            )
            self._terms(org, demo, staff=admin)
            customers.append((org, demo))
        servers = []
        for provider in PROVIDERS:
            owner = self._user(provider.owner)
            org = self._org(
                provider.name, owner=owner, kind=Organization.Kind.PROVIDER, currency=provider.currency, staff=admin
            )
            servers += [self._server(org, provider, spec) for spec in provider.servers]
        token = self._customer_token(customer, new_token)
        return admin, customers, servers, token

    # --- the pieces ---------------------------------------------------------------------------------------

    @functools.cache  # noqa: B019 (one command object per run)
    def _password_hash(self) -> str:
        return make_password(PASSWORD)

    def _user(self, email: str, *, staff: bool = False) -> User:
        user = User.objects.filter(email=email).first()
        if user is None:
            create = User.objects.create_superuser if staff else User.objects.create_user
            user = create(email=email, password=None)
            # The demo password, hashed once for all the demo users (each hash costs a good part of a second).
            user.password = self._password_hash()
            user.save(update_fields=["password"])
            self.stdout.write(f"created user {email}")
        elif staff and not (user.is_staff and user.is_superuser):
            User.objects.filter(pk=user.pk).update(is_staff=True, is_superuser=True)
            user.refresh_from_db()
        address = EmailAddress.objects.filter(user=user, email__iexact=email).first()
        if address is None:
            EmailAddress.objects.create(user=user, email=email, verified=True, primary=True)
        elif not (address.verified and address.primary):
            EmailAddress.objects.filter(pk=address.pk).update(verified=True, primary=True)
        return user

    def _org(self, name: str, *, owner: User, kind: str, currency: str, staff: User) -> Organization:
        org = Organization.objects.filter(name=name, memberships__user=owner, memberships__role=Role.OWNER).first()
        if org is None:
            org = accounts_services.organization_create(user=owner, name=name, kind=kind, currency=currency)
            self.stdout.write(f"created organization {name}")
        if org.status == Organization.Status.PENDING:
            org = accounts_services.organization_approve(org=org, staff=staff)
        return org

    def _terms(self, org: Organization, demo: DemoCustomer, *, staff: User) -> None:
        """What staff give a customer before it rents: its terms (once: never over terms staff changed since) and,
        prepaid, the bank transfer it sent (once per bank reference)."""
        if not BillingTerms.objects.for_org(org).exists():
            limit = Decimal(demo.credit_limit) if demo.credit_limit else Decimal(0)
            billing_services.terms_set(org=org, mode=demo.mode, credit_limit=limit, currency=demo.currency, by=staff)
            self.stdout.write(f"set {org.name} {demo.mode}, credit limit {limit} {demo.currency}")
        if demo.transfer:
            _entry, created = billing_services.adjustment_record(
                org=org,
                amount=demo.transfer,
                currency=demo.currency,
                reason="Bank transfer received (demo data)",
                reference=demo.reference,
                by=staff,
            )
            if created:
                self.stdout.write(f"recorded a bank transfer of {demo.transfer} {demo.currency} for {org.name}")

    def _leases(
        self, org: Organization, demo: DemoCustomer, now, *, contracts_too: bool = False, only_since_last_month=False
    ) -> None:
        """The customer's leases of today, made at `now`, each running its template's workload as the owner asks
        it (with the owner's SSH keys). Those `since_last_month` are made only when asked (`contracts_too`, or
        `only_since_last_month` from the demo's past)."""
        owner = User.objects.get(email=demo.owner)
        for spec in demo.leases:
            if spec.since_last_month and not (contracts_too or only_since_last_month):
                continue
            if only_since_last_month and not spec.since_last_month:
                continue
            template = Template.objects.unscoped("public templates have no owner").get(
                organization=None, slug=spec.template
            )
            keys = list(SshKey.objects.filter(user=owner).values_list("pk", flat=True))
            lease = workloads_services.lease_create(
                org=org,
                user=owner,
                workload={"template": template.pk, "ssh_keys": keys},
                plan=spec.plan,
                gpu_count=spec.gpu_count,
                servers=spec.servers,
                gpu_model=GpuModel.objects.get(slug=spec.gpu_model),
                end_at=now + timedelta(days=spec.days) if spec.days else None,
                now=now,
            )
            self.stdout.write(
                f"rented {lease.gpu_count} {spec.gpu_model} cards ({spec.plan}) for {org.name}, running {spec.template}"
            )

    def _capacity(self, customers: dict[Organization, DemoCustomer], now, *, past: bool) -> None:
        """Issue 20's demo (marketplace/demo_capacity.py): Demo Labs' elastic lease (with the rule's steps of the
        last hours when `past` and they fit in this month), the broker's contract and resale offer, and Demo Labs'
        rental on that offer; each made once."""
        by_name = {org.name: (org, demo) for org, demo in customers.items()}
        labs, labs_demo = by_name["Demo Labs"]
        labs_owner = User.objects.get(email=labs_demo.owner)
        if not demo_capacity.has_elastic(labs):
            with transaction.atomic():
                if past and demo_capacity.past_fits(now):
                    lease = demo_capacity.elastic_past(labs, labs_owner, now, say=self.stdout.write)
                else:
                    lease = demo_capacity.elastic_lease(labs, labs_owner, now)
            self.stdout.write(f"rented {lease.gpu_count} elastic h20-96gb cards (1 to 4, target 70 %) for Demo Labs")
        broker, broker_demo = by_name[BROKER.name]
        broker_owner = User.objects.get(email=broker_demo.owner)
        since = demo_capacity.broker_since(now) if past else now  # with the past: its book has days to show
        with transaction.atomic():
            contract = demo_capacity.broker_contract(broker, broker_owner, since)
            offer = demo_capacity.broker_offer(broker, contract, since + (now - since) / 3)
            rented = since + (now - since) / 2
            running = rented + timedelta(minutes=1) if rented < now else None
            rental = demo_capacity.broker_rental(labs, labs_owner, offer, rented, running_at=running)
        if rental is not None:
            self.stdout.write(
                f"{broker.name} resells the cards of its server-month contract; Demo Labs rented {rental.gpu_count}"
            )

    def _server(self, org: Organization, provider: DemoProvider, spec: DemoServer) -> Server:
        server = Server.objects.for_org(org).filter(name=spec.name).first()
        if server is None:
            server, _token = inventory_services.server_register(
                org=org,
                name=spec.name,
                region=provider.region,
                site=provider.site,
                gpu_model=GpuModel.objects.get(slug=spec.gpu_model),
                gpu_count=GPUS_PER_SERVER,
                cpu_cores=spec.cpu_cores,
                ram_gb=spec.ram_gb,
                disk_gb=spec.disk_gb,
                network_gbps=spec.network_gbps,
                public_host=f"{spec.name}.{provider.region}.demo.suanli.local",
            )
            self.stdout.write(f"registered server {org.name}/{spec.name}")
        uuids = demo_gpu_uuids(spec.name, spec.gpu_model)
        if server.enrolled_at is None:
            model = server.gpu_model
            gpus = [
                {
                    "index": index,
                    "uuid": uuids[index],
                    "name": model.nvml_names[0],
                    "memory_total_mb": model.memory_gb * 1024,
                }
                for index in range(server.gpu_count)
            ]
            hostname = f"{spec.name}.{provider.region}.demo.suanli.local"
            server = inventory_services.server_enroll(server=server, hostname=hostname, gpus=gpus)
        for gpu in Gpu.objects.filter(server=server).exclude(uuid__in=uuids):
            # A demo database seeded before the simulated agents: give the cards the agent's uuids.
            Gpu.objects.filter(pk=gpu.pk).update(uuid=uuids[gpu.index])
        if not Offer.objects.live().filter(server=server).exists():
            firm, spot = DEMO_PRICES[spec.gpu_model]
            plans = ("card_hour", "server_month", "pflops_year")
            marketplace_services.offer_create(
                org=org,
                server=server,
                prices={plan: Decimal(price) for plan, price in zip(plans, firm, strict=True)},
                interruptible_prices={plan: Decimal(price) for plan, price in zip(plans, spot, strict=True)},
            )
            self.stdout.write(f"listed server {org.name}/{spec.name}")
        return server

    def _ssh_key(self, customer: User) -> None:
        """A public key on the demo customer's account, so a demo rental with a template gets an ssh line at once
        (its private half exists nowhere: add your own key on /keys/ to really log in)."""
        if not SshKey.objects.filter(user=customer).exists():
            workloads_services.ssh_key_add(user=customer, name="demo laptop", public_key=DEMO_SSH_KEY)

    def _customer_token(self, customer: User, new_token: bool) -> str | None:
        if not new_token and ApiKey.objects.filter(user=customer, name=DEMO_KEY_NAME, revoked_at=None).exists():
            return None  # tokens are stored hashed: the first run printed it
        _key, token = accounts_services.api_key_create(user=customer, name=DEMO_KEY_NAME)
        return token

    def _report(self, token: str | None, site: str) -> None:
        self.stdout.write(self.style.SUCCESS("Demo data is in place. Logins (web and API), one password for all:"))
        logins = [("staff, admin site /admin/", ADMIN_EMAIL)]
        logins += [(f"customer, {demo.name} ({demo.mode})", demo.owner) for demo in CUSTOMERS]
        logins += [(f"provider, {provider.name}", provider.owner) for provider in PROVIDERS]
        logins += [(f"broker, {BROKER.name} (/broker/)", BROKER.owner)]
        width = max(len(role) for role, _email in logins) + 1
        for role, email in logins:
            self.stdout.write(f"  {role + ':':<{width}} {email}")
        self.stdout.write(f"  password: {PASSWORD}")
        if token:
            self.stdout.write(f"  customer API token: {token}")
            self.stdout.write(f"    curl -H 'Authorization: Bearer <token>' {site}/api/v1/gpu-models/")
        else:
            self.stdout.write(
                "  customer API token: issued on the first run (stored hashed, cannot be shown again); "
                "run with --new-token for another, or POST /api/v1/auth/token/."
            )
