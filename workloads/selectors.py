"""Reads of workloads: a lease's workloads with how to connect, a server's workloads for its provider, and the
workloads that are stuck for staff."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Q, QuerySet
from django.utils import timezone

from inventory.models import Server
from scheduler.models import Lease, LeaseState
from workloads.agent_channel import host_user
from workloads.models import Access, Workload, WorkloadSpec, WorkloadState
from workloads.services import NOTEBOOK_PORT

# Ports that speak HTTP in the common images (Jupyter, vLLM and other OpenAI-compatible servers, TensorBoard, Gradio).
HTTP_PORTS = frozenset({NOTEBOOK_PORT, 8000, 8080, 6006, 7860, 3000})
CONNECTABLE = frozenset({WorkloadState.RUNNING, WorkloadState.STARTING})


@dataclass(frozen=True)
class Connection:
    kind: str  # ssh, http, tcp
    host: str
    port: int
    user: str = ""
    command: str = ""
    url: str = ""
    container_port: int | None = None

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"kind": self.kind, "host": self.host, "port": self.port}
        if self.kind == "ssh":
            body.update(user=self.user, command=self.command)
        elif self.kind == "http":
            body["url"] = self.url
        body["container_port"] = self.container_port
        return body


def host_of(server: Server) -> str:
    return server.public_host or server.hostname or server.name


def connections(workload: Workload, spec: WorkloadSpec | None) -> list[Connection]:
    """How the customer reaches a running workload: the exact ssh line, the notebook URL, the other ports."""
    if spec is None or workload.state not in CONNECTABLE:
        return []
    host = host_of(workload.server)
    shown = f"[{host}]" if ":" in host else host
    user = host_user(workload.lease_id) if spec.access == Access.HOST else "root"
    out = []
    for inner, outer in sorted(workload.ports.items(), key=lambda item: int(item[0])):
        inner_port = int(inner)
        if inner_port == 22:
            command = f"ssh -p {outer} {user}@{host}"
            out.append(Connection("ssh", host, outer, user=user, command=command, container_port=22))
        elif inner_port in HTTP_PORTS:
            url = f"http://{shown}:{outer}/"
            if inner_port == NOTEBOOK_PORT and spec.notebook_token:
                url += f"lab?token={spec.notebook_token}"
            out.append(Connection("http", host, outer, url=url, container_port=inner_port))
        else:
            out.append(Connection("tcp", host, outer, container_port=inner_port))
    return out


def workloads_of_lease(lease: Lease) -> QuerySet[Workload]:
    return lease.workloads.select_related("server").order_by("id")


def spec_of(lease: Lease) -> WorkloadSpec | None:
    return WorkloadSpec.objects.for_org(lease.organization).filter(lease=lease).select_related("template").first()


def workloads_on_server(server: Server) -> QuerySet[Workload]:
    """What runs on a provider's server (no customer data: lease, cards count, state, since)."""
    return (
        server.workloads.exclude(state=WorkloadState.CLEANED)
        .select_related("lease", "lease__workload_spec")
        .order_by("-id")
    )


def server_workload_rows(server: Server, *, now: datetime | None = None) -> QuerySet[Workload]:
    """`workloads_on_server`, each with `cards`: how many cards its lease holds on the server now (the provider's
    server page; still no customer data)."""
    now = now or timezone.now()
    held = Q(lease__allocations__server=server, lease__allocations__period__contains=now)
    return workloads_on_server(server).annotate(cards=Count("lease__allocations", filter=held))


def stuck_workloads(*, now: datetime | None = None) -> QuerySet[Workload]:
    """Workloads in a passing state (pending, pulling, starting, stopping) too long, and those of finished leases
    that their agent has not reported cleaned: for the staff fleet page."""
    now = now or timezone.now()
    since = now - timedelta(seconds=settings.SUANLI_WORKLOAD_STUCK_SECONDS)
    passing = [WorkloadState.PENDING, WorkloadState.PULLING, WorkloadState.STARTING, WorkloadState.STOPPING]
    return (
        Workload.objects.unscoped("the staff fleet page: workloads stuck on any provider's server")
        .filter(
            Q(state__in=passing, state_changed_at__lt=since)
            | Q(state__in=passing, state_changed_at__isnull=True, created_at__lt=since)
            | (~Q(lease__state=LeaseState.ACTIVE) & ~Q(state=WorkloadState.CLEANED) & Q(lease__ended_at__lt=since))
        )
        .select_related("server", "lease", "server__organization")
        .order_by("created_at")
    )
