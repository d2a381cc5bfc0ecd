"""`manage.py seed_demo`: a working demo world, and running it again changes nothing."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from io import StringIO

from allauth.account.models import EmailAddress
from django.contrib.auth import authenticate
from django.core.management import call_command
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, Organization, User
from agents.simulate import SimulatedNVML
from billing.balances import standing
from billing.models import BalanceEntry, BillingTerms
from inventory.models import Gpu, Offer, Server
from marketplace import demo_capacity
from marketplace.management.commands.seed_demo import PASSWORD, PROVIDERS, SIMULATED_MODEL
from scheduler.models import Allocation, Lease, LeaseEvent, Resale, ScalingRule

UUID = re.compile(r"^GPU-[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_VOLATILE = {"last_login", "last_used_at"}
MID_MONTH = datetime(2026, 12, 15, 12, 0, tzinfo=UTC)


def seed(*args: str) -> str:
    out = StringIO()
    call_command("seed_demo", *args, stdout=out)
    return out.getvalue()


def snapshot() -> dict:
    models = [User, EmailAddress, Organization, Membership, ApiKey, Server, Gpu, BillingTerms, BalanceEntry, Lease]
    models += [Allocation, Offer, Resale, ScalingRule]
    return {m._meta.label: [_stable(row) for row in m.objects.order_by("pk").values()] for m in models}


def _stable(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in _VOLATILE}


def test_seed_demo_builds_two_active_providers_with_enrolled_online_servers(db):
    output = seed()
    bob = Organization.objects.get(name="Bob IDC")
    shenzhen = Organization.objects.get(name="Shenzhen Compute")
    assert (bob.kind, bob.status) == ("provider", "active")
    assert (shenzhen.status, shenzhen.currency) == ("active", "CNY")
    assert Organization.objects.get(name="Demo Labs").currency == "USD"
    bob_models = sorted(Server.objects.filter(organization=bob).values_list("gpu_model__slug", flat=True))
    assert bob_models == ["h100-sxm5-80gb"] * 3 + ["h20-96gb"]
    szc_models = sorted(Server.objects.filter(organization=shenzhen).values_list("gpu_model__slug", flat=True))
    assert szc_models == ["a800-sxm4-80gb"] * 2 + ["rtx-4090-24gb"] * 2
    assert set(Server.objects.values_list("region", flat=True).filter(organization=bob)) == {"cn-east-1"}
    assert set(Server.objects.values_list("region", flat=True).filter(organization=shenzhen)) == {"cn-south-1"}
    for server in Server.objects.all():
        assert server.status == "online" and server.enrolled_at and server.enrollment_token_hash == ""
        gpus = list(server.gpus.order_by("index"))
        assert [g.index for g in gpus] == list(range(8))
        assert all(UUID.match(g.uuid) for g in gpus)
        simulated = SimulatedNVML(8, SIMULATED_MODEL[server.gpu_model.slug], seed=server.name)
        assert [g.uuid for g in gpus] == [card.uuid for card in simulated.cards], "the demo agent's own cards"
        assert simulated.model.name in server.gpu_model.nvml_names
        assert all(g.name == server.gpu_model.nvml_names[0] for g in gpus)
    assert Gpu.objects.count() == 64
    assert PASSWORD in output
    assert "customer API token:" in output


def test_demo_users_can_log_in_on_the_web_and_the_api(db):
    output = seed("--no-history")
    for email in ("admin@suanli.local", "customer@suanli.local", "bob@suanli.local", "shenzhen@suanli.local"):
        assert authenticate(email=email, password=PASSWORD) is not None, email
        assert EmailAddress.objects.filter(email=email, verified=True, primary=True).exists()
        assert email in output
    admin = User.objects.get(email="admin@suanli.local")
    assert admin.is_staff and admin.is_superuser
    token = re.search(r"customer API token: (\S+)", output).group(1)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    orgs = client.get("/api/v1/orgs/").json()["results"]
    assert [o["name"] for o in orgs] == ["Demo Labs"]


def test_running_seed_demo_twice_changes_nothing(db):
    seed()
    before = snapshot()
    output = seed()
    assert snapshot() == before
    assert "issued on the first run" in output


def test_demo_customers_get_terms_and_money_before_they_rent_under_the_prepaid_default(db, settings):
    settings.SUANLI_DEFAULT_PAYMENT_MODE = "prepaid"  # the site's default (the suite's conftest makes it postpaid)

    output = seed()

    labs, lab, enterprise = (
        Organization.objects.get(name=name) for name in ("Demo Labs", "Qiming Research Lab", "Hengtai Enterprise AI")
    )
    for org, currency, reference in ((labs, "USD", "DEMO-WIRE-DL-0001"), (lab, "CNY", "DEMO-CMB-QM-0001")):
        terms = BillingTerms.objects.get(organization=org)
        assert (terms.mode, terms.credit_limit, terms.currency) == ("prepaid", 0, currency)
        # The first money in, before any lease (the demo's past adds more transfers and its settlements).
        transfer = BalanceEntry.objects.filter(organization=org).order_by("created_at").first()
        assert (transfer.kind, transfer.reference, transfer.currency) == ("bank_transfer", reference, currency)
        assert transfer.created_by.email == "admin@suanli.local"
        assert transfer.created_at < Lease.objects.filter(organization=org).order_by("start_at").first().start_at
    terms = BillingTerms.objects.get(organization=enterprise)
    assert (terms.mode, terms.credit_limit, terms.currency) == ("postpaid", 500000, "CNY")
    assert not BalanceEntry.objects.filter(organization=enterprise).exists()
    # Today's leases, each running its template's workload (the live ones; the past ones have ended).
    leases = {
        org.name: list(Lease.objects.filter(organization=org, state="active").order_by("pk"))
        for org in (labs, lab, enterprise)
    }
    # Besides its two H100 cards: its elastic lease and its rental from the broker (test_issue_20_demo_* below).
    assert [(x.plan, x.gpu_count, x.workload_spec.template.slug) for x in leases["Demo Labs"]][0] == (
        "card_hour",
        2,
        "pytorch-jupyter",
    )
    assert len(leases["Demo Labs"]) == 3
    assert [(x.plan, x.gpu_count) for x in leases["Qiming Research Lab"]] == [("card_hour", 4)]
    assert [(x.plan, x.gpu_count) for x in leases["Hengtai Enterprise AI"]] == [("server_month", 8)]
    assert all(lease.workloads.exists() for leased in leases.values() for lease in leased)
    for org in (labs, lab, enterprise):  # covered for weeks, not about to be stopped
        money = standing(org)
        assert money.available is not None and money.available > money.burn_per_hour * 24 * 14, org.name
    assert "enterprise@suanli.local" in output and "research@suanli.local" in output

    before = snapshot()
    seed()
    assert snapshot() == before


def test_seed_demo_is_safe_on_a_database_with_other_data(bob, alice):
    seed()
    assert Organization.objects.filter(name="Bob IDC").count() == 2  # the persona's and the demo's
    assert Server.objects.filter(organization=bob.org).count() == 0
    assert Membership.objects.filter(organization=alice.org).count() == 1


def _issue_20_pieces():
    labs = Organization.objects.get(name="Demo Labs")
    broker = Organization.objects.get(name=demo_capacity.BROKER_NAME)
    elastic = Lease.objects.get(organization=labs, scaling__isnull=False)
    return labs, broker, elastic


def test_issue_20_demo_has_an_elastic_lease_with_scaled_steps_and_a_broker_with_a_resold_card_rental(db, time_machine):
    time_machine.move_to(MID_MONTH, tick=True)  # the rule's past fits in the month (not so on its first hours)
    output = seed()

    labs, broker, elastic = _issue_20_pieces()
    rule = ScalingRule.objects.get(lease=elastic)
    assert (rule.min_gpus, rule.max_gpus, rule.target_utilization_pct) == (1, 4, 70)
    assert (elastic.plan, elastic.state, elastic.gpu_model.slug) == ("card_hour", "active", "h20-96gb")
    assert {a.server.name for a in elastic.allocations.all()} == {"bob-h20-01"}
    assert elastic.workload_spec.template.slug == "pytorch-jupyter"
    # The rule's past, made by the beat job at past moments from the agent's reports: up twice, then down once.
    steps = [
        (event.data["from_count"], event.data["to_count"], event.data["reason"])
        for event in LeaseEvent.objects.filter(lease=elastic, kind=LeaseEvent.Kind.SCALED).order_by("pk")
    ]
    assert [(low, high) for low, high, _why in steps] == [(1, 2), (2, 3), (3, 2)]
    assert {why for _low, _high, why in steps} <= {"utilization_high", "utilization_low"}
    assert elastic.gpu_count == 2
    minute = timedelta(minutes=1)
    assert timedelta(0) <= rule.last_scaled_at - (MID_MONTH - timedelta(minutes=40)) < minute
    assert timedelta(0) <= elastic.start_at - (MID_MONTH - demo_capacity.ELASTIC_PAST_START) < minute
    # The chart's first range (the last hour) shows the step down from 3 cards to 2.
    client = APIClient()
    client.force_authenticate(User.objects.get(email="customer@suanli.local"))
    history = client.get(f"/api/v1/leases/{elastic.pk}/scaling/history/").json()
    assert [point["gpus"] for point in history["gpus"]] == [3, 2, 2]
    # The simulated agent of its server follows the load curve under `manage.py dev`.
    curves = {spec.name: spec.load_curve for provider in PROVIDERS for spec in provider.servers if spec.load_curve}
    assert curves == {"bob-h20-01": demo_capacity.ELASTIC_LOAD_CURVE}

    # The broker: a whole H100 server by the month, its cards resold by the card-hour, two of them rented.
    contract = Lease.objects.get(organization=broker)
    assert (contract.plan, contract.state, contract.gpu_count) == ("server_month", "active", 8)
    # With the past, the contract started days ago and the rental since, so the broker's book has days to show.
    assert timedelta(0) <= contract.start_at - (MID_MONTH - demo_capacity.BROKER_PAST) < timedelta(minutes=1)
    offer = Offer.objects.get(organization=broker, is_resale=True)
    assert Resale.objects.get(offer=offer).lease == contract
    assert offer.server_id == contract.allocations.get(gpu__index=0).server_id
    rental = Lease.objects.get(organization=labs, offer=offer)
    assert (rental.plan, rental.state, rental.gpu_count) == ("card_hour", "active", 2)
    assert contract.start_at < rental.start_at < MID_MONTH - timedelta(days=1)
    backing = set(contract.allocations.values_list("pk", flat=True))
    assert set(rental.allocations.values_list("backing_id", flat=True)) <= backing
    assert standing(broker).available > 0
    assert "broker@suanli.local" in output

    # Made in the past, their workloads were reported running then: the start-timeout check fails neither.
    from workloads.checks import workloads_check

    assert elastic.workloads.filter(started_at__isnull=True).count() == 0 and rental.workloads.exists()
    assert rental.workloads.filter(started_at__isnull=True).count() == 0
    workloads_check(now=MID_MONTH + timedelta(minutes=1))  # today's leases are still within their start timeout
    assert {Lease.objects.get(pk=x.pk).state for x in (elastic, rental)} == {"active"}

    time_machine.move_to(MID_MONTH + timedelta(minutes=30), tick=True)
    before = snapshot()
    seed()
    assert snapshot() == before


def test_issue_20_demo_pieces_are_made_today_without_the_past(db):
    seed("--no-history")

    labs, broker, elastic = _issue_20_pieces()
    assert elastic.gpu_count == 1
    assert not LeaseEvent.objects.filter(lease=elastic, kind=LeaseEvent.Kind.SCALED).exists()
    assert Lease.objects.filter(organization=labs, offer__organization=broker, state="active").count() == 1

    before = snapshot()
    seed("--no-history")
    assert snapshot() == before


def test_manage_py_dev_runs_the_elastic_lease_servers_agent_with_the_load_curve(db, settings, tmp_path):
    from config.management.commands.dev import Command as Dev

    settings.VAR_DIR = tmp_path
    seed("--no-history")

    children = {
        child.name: child.argv
        for child in Dev()._demo_agents({"no_seed": False, "no_agents": False, "addr": "127.0.0.1", "port": 8000})
    }
    assert len(children) == sum(len(provider.servers) for provider in PROVIDERS)
    elastic = children["bob-h20-01"]
    assert elastic[elastic.index("--load-curve") + 1] == demo_capacity.ELASTIC_LOAD_CURVE
    assert elastic.index("--load-curve") < elastic.index("run")  # an agent option, before the subcommand
    assert all("--load-curve" not in argv for name, argv in children.items() if name != "bob-h20-01")
