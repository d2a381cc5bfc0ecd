"""The victims of the tenancy tests (alice's and bob's objects), the URL name -> victim-object table every walk of
the API uses, and a snapshot of tenant data to prove a refused request changed nothing."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from django.urls import URLPattern

from accounts.models import ApiKey, User
from accounts.tenancy import tenant_models
from tests.conftest import Persona


@dataclass
class Victims:
    alice: Persona
    bob: Persona
    objects: dict[str, Any] = field(default_factory=dict)

    def secrets(self) -> list[str]:
        """Strings that must never appear in a foreign tenant's response."""
        values = [self.alice.user.email, self.alice.org.name, self.bob.user.email, self.bob.org.name]
        values += [str(v) for v in self.objects.values() if isinstance(v, str)]
        return values


def _alice_org(v: Victims) -> dict:
    return {"pk": v.alice.org.pk}


def _bob_server(v: Victims) -> dict:
    return {"pk": v.objects["server"].pk}


def _bob_offer(v: Victims) -> dict:
    if "offer" not in v.objects:
        from tests.factories import OfferFactory

        v.objects["offer"] = OfferFactory(server=v.objects["server"])
    return {"pk": v.objects["offer"].pk}


def _alice_lease(v: Victims) -> dict:
    if "lease" not in v.objects:
        from tests.factories import LeaseFactory

        v.objects["lease"] = LeaseFactory(organization=v.alice.org)
    return {"pk": v.objects["lease"].pk}


def _alice_elastic_lease(v: Victims) -> dict:
    """Alice's lease with a (queue-driven) scaling rule: its rule reads as 200 to her organisation."""
    if "elastic_lease" not in v.objects:
        from scheduler.models import ScalingRule
        from tests.factories import LeaseFactory

        lease = LeaseFactory(organization=v.alice.org)
        ScalingRule.objects.create(lease=lease, min_gpus=0, max_gpus=4, queue_depth_per_gpu=10)
        v.objects["elastic_lease"] = lease
    return {"pk": v.objects["elastic_lease"].pk}


def _bob_statement(v: Victims) -> dict:
    if "statement" not in v.objects:
        from tests.factories import ProviderStatementFactory

        v.objects["statement"] = ProviderStatementFactory(
            organization=v.bob.org, period="2026-03", currency="USD", gross=100, take_rate="0.15", commission=15, net=85
        )
    return {"pk": v.objects["statement"].pk}


def _alice_invoice(v: Victims) -> dict:
    if "invoice" not in v.objects:
        from tests.factories import InvoiceFactory

        v.objects["invoice"] = InvoiceFactory(
            organization=v.alice.org,
            period="2026-03",
            currency="USD",
            number="INV-900001",
            state="open",
            subtotal=10,
            total=10,
        )
    return {"pk": v.objects["invoice"].pk}


def _alice_workload(v: Victims) -> dict:
    if "workload" not in v.objects:
        from django.utils import timezone

        from workloads.models import Workload

        lease = _alice_lease(v)["pk"]
        v.objects["workload"] = Workload.objects.create(
            lease_id=lease, server=v.objects["server"], created_at=timezone.now()
        )
    return {"pk": v.objects["workload"].lease_id, "wid": v.objects["workload"].pk}


def _alice_ssh_key(v: Victims) -> dict:
    if "ssh_key" not in v.objects:
        from workloads.models import SshKey

        v.objects["ssh_key"] = SshKey.objects.create(
            user=v.alice.user,
            name="alice-laptop",
            public_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA alice-laptop",
            key_type="ssh-ed25519",
            bits=256,
            fingerprint="SHA256:alice-laptop",
        )
    return {"pk": v.objects["ssh_key"].pk}


def _alice_data_access(v: Victims) -> dict:
    """A data-access session of alice's on her volume (workloads.data_access), with its container's row."""
    if "data_access" not in v.objects:
        from datetime import timedelta
        from decimal import Decimal

        from django.utils import timezone

        from workloads.models import DataAccess, Workload

        _alice_volume(v)
        now = timezone.now()
        session = DataAccess.objects.create(
            organization=v.alice.org,
            server=v.objects["server"],
            price_per_hour=Decimal("0.05"),
            currency=v.alice.org.currency,
            created_at=now,
            ends_at=now + timedelta(hours=4),
        )
        session.volumes.set([v.objects["volume"]])
        Workload.objects.create(data_access=session, server=v.objects["server"], created_at=now)
        v.objects["data_access"] = session
    return {"pk": v.objects["data_access"].pk}


def _alice_volume(v: Victims) -> dict:
    if "volume" not in v.objects:
        from decimal import Decimal

        from django.utils import timezone

        from workloads.models import Volume

        v.objects["volume"] = Volume.objects.create(
            organization=v.alice.org,
            server=v.objects["server"],
            name="alice-data",
            size_gb=10,
            price_per_gb_month=Decimal("0.1"),
            currency=v.alice.org.currency,
            created_at=timezone.now(),
        )
    return {"pk": v.objects["volume"].pk}


def _bob_transfer(v: Victims) -> dict:
    """A move of alice's volume (on another provider's server) to bob's server, one chunk staged: bob's agent is
    its target, so it may read the move and the chunk; nobody else may."""
    if "move" not in v.objects:
        from decimal import Decimal

        from django.utils import timezone

        from tests.factories import GpuModelFactory, ProviderFactory, online_server
        from workloads import volume_moves
        from workloads.models import Volume, VolumeMove

        elsewhere = online_server(organization=ProviderFactory(), gpu_model=GpuModelFactory(), volume_disk_gb=100)
        volume = Volume.objects.create(
            organization=v.alice.org,
            server=elsewhere,
            name="alice-moving",
            size_gb=1,
            state="ready",
            price_per_gb_month=Decimal("0.1"),
            currency=v.alice.org.currency,
            created_at=timezone.now(),
        )
        move = VolumeMove.objects.create(
            volume=volume,
            organization=v.alice.org,
            source=elsewhere,
            target=v.objects["server"],
            source_price=Decimal("0.1"),
            target_price=Decimal("0.1"),
            chunk_bytes=4096,
            chunks=1,
            bytes_sent=5,
            state="copying",
            requested_at=timezone.now(),
        )
        staged = volume_moves.transfer_dir() / str(move.pk)
        staged.mkdir(parents=True, exist_ok=True)
        (staged / f"{0:08d}").write_bytes(b"chunk")
        v.objects["move"] = move
    return {"move": v.objects["move"].pk}


# URL name -> the kwargs that point at a victim's object.
VICTIM_OBJECTS: dict[str, Callable[[Victims], dict]] = {
    "org-detail": _alice_org,
    "org-approve": _alice_org,
    "org-members": _alice_org,
    "org-member": lambda v: {"pk": v.alice.org.pk, "member_id": v.alice.membership.pk},
    "api-key-detail": lambda v: {"pk": ApiKey.objects.filter(user=v.alice.user).first().pk},
    "server-detail": _bob_server,
    "server-drain": _bob_server,
    "server-undrain": _bob_server,
    "server-enrollment-token": _bob_server,
    "server-telemetry": _bob_server,
    "offer-detail": _bob_offer,
    "offer-reclaim": _bob_offer,
    "lease-detail": _alice_lease,
    "lease-end": _alice_lease,
    "lease-resize": _alice_lease,
    "lease-stop": _alice_lease,
    "lease-start": _alice_lease,
    "lease-move": _alice_lease,
    "lease-events": _alice_lease,
    "payout-detail": _bob_statement,
    "payout-pay": _bob_statement,
    "lease-telemetry": _alice_lease,
    "lease-scaling-history": _alice_lease,
    "lease-scaling": _alice_elastic_lease,
    "lease-queue-depth": _alice_elastic_lease,
    "lease-usage": _alice_lease,
    "lease-workload-restart": _alice_workload,
    "lease-workload-stop": _alice_workload,
    "lease-workload-logs": _alice_workload,
    "ssh-key-detail": _alice_ssh_key,
    "volume-detail": _alice_volume,
    "data-access-detail": _alice_data_access,
    "volume-move": _alice_volume,
    "agent-volume-transfer": _bob_transfer,
    "agent-volume-transfer-chunk": lambda v: _bob_transfer(v) | {"n": 0},
    "agent-volume-transfer-sent": _bob_transfer,
    "agent-volume-transfer-received": _bob_transfer,
    "agent-volume-transfer-failed": _bob_transfer,
    "invoice-detail": _alice_invoice,
    "invoice-pdf": _alice_invoice,
    "invoice-pay": _alice_invoice,
    "org-billing": _alice_org,
    "org-balance-adjustments": _alice_org,
}


def methods_of(pattern: URLPattern) -> list[str]:
    callback = pattern.callback
    actions = getattr(callback, "actions", None)
    if actions:
        return [method for method in actions if method in ("get", "post", "put", "patch", "delete")]
    view_class = getattr(callback, "cls", None) or getattr(callback, "view_class", None)
    return [m for m in ("get", "post", "put", "patch", "delete") if view_class and hasattr(view_class, m)]


# Bookkeeping of the attacker's own credential, not data.
_VOLATILE = {"last_used_at", "last_login"}


def snapshot() -> dict[str, list[dict]]:
    models = [*tenant_models(), ApiKey, User]
    return {
        m._meta.label: [
            {k: v for k, v in row.items() if k not in _VOLATILE} for row in m._default_manager.order_by("pk").values()
        ]
        for m in models
    }
