"""Prometheus exposition of every card's latest sample, named like NVIDIA dcgm-exporter where they overlap,
so operators' existing Grafana dashboards work. Served at /metrics (see README, Operations)."""

from __future__ import annotations

import hmac

from django.conf import settings
from django.http import HttpRequest, HttpResponse
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from accounts.access import is_platform_staff
from accounts.databases import read_alias
from accounts.errors import error_body
from inventory.models import Gpu

# (metric name, help, sample field, scale)
_GAUGES = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "utilization_pct", 1),
    ("DCGM_FI_DEV_MEM_COPY_UTIL", "Memory utilization (in %).", "memory_util_pct", 1),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "memory_used_mb", 1),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temperature_c", 1),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_w", 1),
    ("DCGM_FI_DEV_SM_CLOCK", "SM clock frequency (in MHz).", "sm_clock_mhz", 1),
    ("DCGM_FI_DEV_MEM_CLOCK", "Memory clock frequency (in MHz).", "mem_clock_mhz", 1),
    ("DCGM_FI_DEV_ECC_SBE_VOL_TOTAL", "Total number of single-bit volatile ECC errors.", "ecc_sbe", 1),
    ("DCGM_FI_DEV_ECC_DBE_VOL_TOTAL", "Total number of double-bit volatile ECC errors.", "ecc_dbe", 1),
    ("DCGM_FI_DEV_PCIE_REPLAY_COUNTER", "Total number of PCIe retries.", "pcie_replay_count", 1),
    ("DCGM_FI_DEV_FAN_SPEED", "Fan speed (in %).", "fan_pct", 1),
)
_HEALTH_VALUE = {"healthy": 0, "degraded": 1, "failed": 2}
_LABELS = ["gpu", "UUID", "modelName", "Hostname", "server", "provider"]


def _allowed(request: HttpRequest) -> bool:
    token = settings.METRICS_TOKEN
    header = request.headers.get("Authorization", "")
    if token and header.startswith("Bearer "):
        return hmac.compare_digest(header.removeprefix("Bearer ").strip(), token)
    return is_platform_staff(request.user)


def render_metrics() -> bytes:
    registry = CollectorRegistry()
    gauges = {name: Gauge(name, text, _LABELS, registry=registry) for name, text, _field, _scale in _GAUGES}
    health = Gauge("suanli_gpu_health", "GPU health: 0 healthy, 1 degraded, 2 failed.", _LABELS, registry=registry)
    last_seen = Gauge(
        "suanli_gpu_last_sample_timestamp_seconds", "Time of the latest sample.", _LABELS, registry=registry
    )
    fleet = Gpu.objects.unscoped("the operator's metrics cover every provider's cards (staff or METRICS_TOKEN)")
    # Every card's latest sample, every scrape (about 1 KB a card): from the read replica when there is one
    # (accounts/databases.py, docs/scaling.md).
    fleet = fleet.using(read_alias())
    gpus = fleet.select_related("server__organization").only(
        "index",
        "uuid",
        "name",
        "health",
        "last_sample",
        "last_sample_at",
        "server__name",
        "server__hostname",
        "server__organization__name",
    )
    for gpu in gpus.iterator(chunk_size=2000):
        labels = [
            str(gpu.index),
            gpu.uuid,
            gpu.name,
            gpu.server.hostname or gpu.server.name,
            gpu.server.name,
            gpu.server.organization.name,
        ]
        health.labels(*labels).set(_HEALTH_VALUE.get(gpu.health, 2))
        sample = gpu.last_sample or {}
        if gpu.last_sample_at:
            last_seen.labels(*labels).set(gpu.last_sample_at.timestamp())
        for name, _text, field, scale in _GAUGES:
            value = sample.get(field)
            if value is not None:
                gauges[name].labels(*labels).set(value * scale)
    return generate_latest(registry)


def metrics_view(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        import json

        body = error_body("not_authenticated", "Send Authorization: Bearer <METRICS_TOKEN>.")
        return HttpResponse(json.dumps(body), status=401, content_type="application/json")
    return HttpResponse(render_metrics(), content_type=CONTENT_TYPE_LATEST)
