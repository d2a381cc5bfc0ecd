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

from scheduler.models import Lease  # noqa: E402


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
