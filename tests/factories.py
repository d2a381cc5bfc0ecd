"""Factories for every model the tests build. Personas: alice (customer), bob (provider), charlie (foreign)."""

from __future__ import annotations

import factory
from django.contrib.auth.hashers import make_password

from accounts.models import Membership, Organization, Role, User

PASSWORD = "correct horse battery staple"
# Hashing once keeps the suite fast: every factory user shares this pre-computed password hash.
_PASSWORD_HASH: str | None = None


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        skip_postgeneration_save = True

    email = factory.Sequence(lambda n: f"user{n}@example.com")
    password = factory.LazyFunction(lambda: _hashed())
    is_active = True


def _hashed() -> str:
    global _PASSWORD_HASH
    if _PASSWORD_HASH is None:
        _PASSWORD_HASH = make_password(PASSWORD)
    return _PASSWORD_HASH


class OrganizationFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Organization

    name = factory.Sequence(lambda n: f"Org {n}")
    kind = Organization.Kind.CUSTOMER
    status = Organization.Status.ACTIVE
    currency = "USD"


class ProviderFactory(OrganizationFactory):
    kind = Organization.Kind.PROVIDER


class MembershipFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Membership

    organization = factory.SubFactory(OrganizationFactory)
    user = factory.SubFactory(UserFactory)
    role = Role.OWNER


# --- inventory -------------------------------------------------------------------------------------------
from inventory.models import Gpu, GpuModel, Offer, Server  # noqa: E402


class GpuModelFactory(factory.django.DjangoModelFactory):
    """A catalogue entry of its own (the real catalogue is loaded by migration; use `GpuModel.objects.get(slug=...)`
    for a real model)."""

    class Meta:
        model = GpuModel
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"test-gpu-{n}")
    name = factory.Sequence(lambda n: f"Test GPU {n}")
    vendor = "NVIDIA"
    memory_gb = 80
    memory_type = "HBM3"
    fp16_tflops = "989.40"
    fp32_tflops = "67.00"
    tdp_w = 700
    interconnect = "nvlink"
    interconnect_gbps = 900
    nvml_names = factory.LazyAttribute(lambda o: [f"NVIDIA {o.name}"])
    sources = factory.LazyFunction(lambda: {"fp16_tflops": "https://example.com/datasheet"})


class ServerFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Server

    organization = factory.SubFactory(ProviderFactory)
    name = factory.Sequence(lambda n: f"node-{n:03d}")
    region = "cn-east-1"
    gpu_model = factory.SubFactory(GpuModelFactory)
    gpu_count = 8
    cpu_cores = 128
    ram_gb = 2048
    disk_gb = 30000
    interconnect = factory.LazyAttribute(lambda o: o.gpu_model.interconnect)


class GpuFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Gpu

    server = factory.SubFactory(ServerFactory)
    index = factory.Sequence(lambda n: n % 8)
    uuid = factory.Sequence(lambda n: f"GPU-{n:08x}-0000-4000-8000-{n:012x}")
    name = factory.LazyAttribute(lambda o: (o.server.gpu_model.nvml_names or [""])[0])
    memory_total_mb = 81559


# --- scheduler -------------------------------------------------------------------------------------------
from datetime import timedelta  # noqa: E402
from decimal import Decimal  # noqa: E402

from django.utils import timezone  # noqa: E402

from scheduler.models import Allocation, Lease  # noqa: E402


class OfferFactory(factory.django.DjangoModelFactory):
    """A live offer pricing every plan, on-demand and interruptible, in the provider's currency."""

    class Meta:
        model = Offer

    server = factory.SubFactory(ServerFactory)
    organization = factory.LazyAttribute(lambda o: o.server.organization)
    currency = factory.LazyAttribute(lambda o: o.organization.currency)
    card_hour_price = Decimal("2.5000")
    server_month_price = Decimal("12000.0000")
    pflops_year_price = Decimal("150000.0000")
    card_hour_interruptible_price = Decimal("1.2500")
    server_month_interruptible_price = Decimal("8000.0000")
    pflops_year_interruptible_price = Decimal("100000.0000")


def online_server(*, gpus: int = 8, offer: dict | None | bool = True, **fields) -> Server:
    """An enrolled, online server of an active provider with `gpus` healthy cards (indexes 0..gpus-1), listed by a
    live offer for every plan (`offer`: field overrides for it, or False for none)."""
    fields.setdefault("status", Server.Status.ONLINE)
    server = ServerFactory(gpu_count=gpus, **fields)
    for index in range(gpus):
        GpuFactory(server=server, index=index)
    if offer is not False:
        OfferFactory(server=server, **(offer if isinstance(offer, dict) else {}))
    return server


class LeaseFactory(factory.django.DjangoModelFactory):
    """A lease row without allocations (use scheduler.services.lease_create for a real, allocated one)."""

    class Meta:
        model = Lease

    organization = factory.SubFactory(OrganizationFactory)
    plan = "card_hour"
    state = "active"
    gpu_count = 1
    currency = factory.LazyAttribute(lambda o: o.organization.currency)
    unit_price = Decimal("2.500000")
    start_at = factory.LazyFunction(timezone.now)
    end_at = factory.LazyFunction(lambda: timezone.now() + timedelta(hours=1))


class AllocationFactory(factory.django.DjangoModelFactory):
    """A card held by a lease for the lease's period, at the lease's unit price (one unit). A bare row: use
    scheduler.services.lease_create for a real allocation."""

    class Meta:
        model = Allocation

    lease = factory.SubFactory(LeaseFactory)
    gpu = factory.SubFactory(GpuFactory)
    server = factory.LazyAttribute(lambda o: o.gpu.server)
    period = factory.LazyAttribute(lambda o: (o.lease.start_at, o.lease.end_at))
    unit_price = factory.LazyAttribute(lambda o: o.lease.unit_price)
    units = Decimal(1)


# --- inventory events ------------------------------------------------------------------------------------
from inventory.models import GpuHealthEvent, ServerOutage  # noqa: E402


class GpuHealthEventFactory(factory.django.DjangoModelFactory):
    """A card going from healthy to failed now (pass `at`, `from_health`, `to_health` for another change)."""

    class Meta:
        model = GpuHealthEvent

    gpu = factory.SubFactory(GpuFactory)
    server = factory.LazyAttribute(lambda o: o.gpu.server)
    at = factory.LazyFunction(timezone.now)
    from_health = "healthy"
    to_health = "failed"


class ServerOutageFactory(factory.django.DjangoModelFactory):
    """A time the server's agent was silent; open (`ended_at` None) unless `ended_at` is given."""

    class Meta:
        model = ServerOutage

    server = factory.SubFactory(ServerFactory)
    started_at = factory.LazyFunction(timezone.now)
    ended_at = None


# --- billing ---------------------------------------------------------------------------------------------
from billing.models import (  # noqa: E402
    Invoice,
    Payment,
    Payout,
    ProviderStatement,
    ProviderTerms,
    StripeEvent,
    UsageRecord,
)


class UsageRecordFactory(factory.django.DjangoModelFactory):
    """One metered slot of an allocation: an hour from its lease's start, fully up, at the allocation's price, rated
    as card-hours (quantity = up seconds / 3600 x units; amount = quantity x unit price)."""

    class Meta:
        model = UsageRecord

    allocation = factory.SubFactory(AllocationFactory)
    lease = factory.LazyAttribute(lambda o: o.allocation.lease)
    organization = factory.LazyAttribute(lambda o: o.lease.organization)
    provider = factory.LazyAttribute(lambda o: o.server.organization)
    server = factory.LazyAttribute(lambda o: o.allocation.server)
    plan = factory.LazyAttribute(lambda o: o.lease.plan)
    slot_start = factory.LazyAttribute(lambda o: o.lease.start_at)
    start = factory.LazyAttribute(lambda o: o.slot_start)
    end = factory.LazyAttribute(lambda o: o.start + timedelta(hours=1))
    seconds = Decimal(3600)
    down_seconds = Decimal(0)
    units = factory.LazyAttribute(lambda o: o.allocation.units)
    unit_price = factory.LazyAttribute(lambda o: o.allocation.unit_price)
    currency = factory.LazyAttribute(lambda o: o.lease.currency)
    quantity = factory.LazyAttribute(lambda o: (Decimal(o.seconds) - Decimal(o.down_seconds)) / 3600 * Decimal(o.units))
    amount = factory.LazyAttribute(lambda o: Decimal(o.quantity) * Decimal(o.unit_price))


class InvoiceFactory(factory.django.DjangoModelFactory):
    """A customer's invoice for March 2026 in its currency: a draft with no lines and zero sums unless given
    (an issued one needs `number`, `state` and its sums)."""

    class Meta:
        model = Invoice

    organization = factory.SubFactory(OrganizationFactory)
    period = "2026-03"
    currency = factory.LazyAttribute(lambda o: o.organization.currency)


class PaymentFactory(factory.django.DjangoModelFactory):
    """A Stripe payment of the whole invoice, still pending unless `state` says otherwise."""

    class Meta:
        model = Payment

    invoice = factory.SubFactory(InvoiceFactory)
    organization = factory.LazyAttribute(lambda o: o.invoice.organization)
    stripe_payment_intent = factory.Sequence(lambda n: f"pi_test{n:020d}")
    amount = factory.LazyAttribute(lambda o: o.invoice.total)
    currency = factory.LazyAttribute(lambda o: o.invoice.currency)


class StripeEventFactory(factory.django.DjangoModelFactory):
    """A stored Stripe webhook event; its payload names its id and type and carries `data.object` = {}."""

    class Meta:
        model = StripeEvent

    event_id = factory.Sequence(lambda n: f"evt_test{n:020d}")
    type = "payment_intent.succeeded"
    created = factory.LazyFunction(timezone.now)
    payload = factory.LazyAttribute(lambda o: {"id": o.event_id, "type": o.type, "data": {"object": {}}})


class ProviderStatementFactory(factory.django.DjangoModelFactory):
    """A provider's open statement for March 2026: 1000.00 gross at a 15 % commission, no credits; `net` always
    follows from the sums (the database checks net = gross - commission - credits)."""

    class Meta:
        model = ProviderStatement

    organization = factory.SubFactory(ProviderFactory)
    period = "2026-03"
    currency = factory.LazyAttribute(lambda o: o.organization.currency)
    gross = Decimal("1000.00")
    take_rate = Decimal("0.15")
    commission = factory.LazyAttribute(lambda o: Decimal(o.gross) * Decimal(o.take_rate))
    credits = Decimal(0)
    net = factory.LazyAttribute(lambda o: Decimal(o.gross) - Decimal(o.commission) - Decimal(o.credits))


class PayoutFactory(factory.django.DjangoModelFactory):
    """A bank settlement of the statement's net, paid."""

    class Meta:
        model = Payout

    statement = factory.SubFactory(ProviderStatementFactory)
    organization = factory.LazyAttribute(lambda o: o.statement.organization)
    method = Payout.Method.BANK
    amount = factory.LazyAttribute(lambda o: o.statement.net)
    currency = factory.LazyAttribute(lambda o: o.statement.currency)
    state = Payout.State.PAID


class ProviderTermsFactory(factory.django.DjangoModelFactory):
    """A provider's payout terms: the platform's commission rate and no Stripe Connect account unless given."""

    class Meta:
        model = ProviderTerms

    organization = factory.SubFactory(ProviderFactory)
    take_rate = None
    stripe_account = ""
