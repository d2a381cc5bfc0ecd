"""A workload's output for its customer: the agent sends the tail of each of its workloads' container logs
(at most LOG_TAIL_BYTES, only when it changed, on a slower cadence than the reports: agents/workload_logs.py) to
`POST /api/v1/agent/workload-logs/`, signed; the platform keeps the latest tail per workload (`WorkloadLog`), and
`GET /api/v1/leases/{id}/workloads/{wid}/logs/?tail=N` serves its last N lines with the time the agent read it.

The agent adds nothing to the output (no environment, no secrets of the spec): what the container printed is what
its customer reads. An agent reaches only the workloads of its own server; another server's workload id, a data
access session's container, or an unknown id is skipped, never an error that tells which ids exist.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db import transaction

from accounts.errors import InvalidInput
from accounts.inputs import clean_text
from accounts.tenancy import platform_work
from inventory.models import Server
from workloads.models import Workload, WorkloadLog

LOG_TAIL_BYTES = 64 * 1024  # the most kept per workload (the agent sends no more)
MAX_ENTRIES = 64  # workloads per request
DEFAULT_LINES = 200
MAX_LINES = 10_000

_PLATFORM = "an agent stores the output of its own server's workloads"


def clip(text: str, limit: int = LOG_TAIL_BYTES) -> tuple[str, bool]:
    """The end of `text` within `limit` UTF-8 bytes (cut at a character, then after the first line break when one
    is near, so the tail starts with a whole line); and whether anything was cut."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return text, False
    tail = data[-limit:].decode("utf-8", "ignore")
    newline = tail.find("\n")
    if 0 <= newline < 4096:
        tail = tail[newline + 1 :]
    return tail, True


def parse_log_upload(payload: Any) -> list[dict[str, Any]]:
    """The entries of an agent's upload, checked: `{"logs": [{"id", "text", "truncated", "captured_at"}]}`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("logs"), list):
        raise InvalidInput("logs must be a list.", fields={"logs": ["A list of {id, text, captured_at}."]})
    entries = payload["logs"]
    if len(entries) > MAX_ENTRIES:
        raise InvalidInput(f"At most {MAX_ENTRIES} workloads per upload.", fields={"logs": ["Too many."]})
    clean: dict[int, dict[str, Any]] = {}
    for index, raw in enumerate(entries):
        if not isinstance(raw, dict):
            raise InvalidInput(f"logs[{index}] must be an object.")
        wid, text, at = raw.get("id"), raw.get("text"), raw.get("captured_at")
        if isinstance(wid, bool) or not isinstance(wid, int) or not 0 < wid < 2**63 or not isinstance(text, str):
            raise InvalidInput(f"logs[{index}] needs an id and a text.")
        if isinstance(at, bool) or not isinstance(at, int | float) or not 0 <= at < 253402300800:
            raise InvalidInput(f"logs[{index}] needs captured_at, seconds since the epoch.")
        text, cut = clip(clean_text(text))
        clean[wid] = {
            "id": wid,
            "text": text,
            "truncated": bool(raw.get("truncated")) or cut,
            "captured_at": datetime.fromtimestamp(at, tz=UTC),
        }
    return list(clean.values())


@platform_work(_PLATFORM)
def logs_store(*, server: Server, entries: list[dict[str, Any]], now: datetime) -> int:
    """Keep each entry as its workload's latest tail, for workloads of `server`'s leases only; an entry older than
    the one kept (a late retry) changes nothing. Idempotent; returns how many rows were written."""
    ids = [e["id"] for e in entries]
    ours = set(
        Workload.objects.unscoped(_PLATFORM)
        .filter(server=server, pk__in=ids, lease__isnull=False)
        .values_list("pk", flat=True)
    )
    written = 0
    with transaction.atomic():
        for entry in sorted(entries, key=lambda e: e["id"]):  # rows locked in key order
            if entry["id"] not in ours:
                continue
            kept = WorkloadLog.objects.unscoped(_PLATFORM).select_for_update().filter(workload_id=entry["id"]).first()
            if kept is not None and kept.captured_at > entry["captured_at"]:
                continue
            WorkloadLog.objects.unscoped(_PLATFORM).update_or_create(
                workload_id=entry["id"],
                defaults={
                    "text": entry["text"],
                    "truncated": entry["truncated"],
                    "captured_at": entry["captured_at"],
                    "received_at": now,
                },
            )
            written += 1
    return written


def parse_tail(value: str | None) -> int:
    """The `tail` query parameter: a line count from 1 to MAX_LINES (DEFAULT_LINES when absent)."""
    if value in (None, ""):
        return DEFAULT_LINES
    if not (value.isascii() and value.isdigit()) or not 1 <= int(value) <= MAX_LINES:
        raise InvalidInput(f"tail is a number of lines from 1 to {MAX_LINES}.", fields={"tail": [f"1 to {MAX_LINES}."]})
    return int(value)


def log_tail(*, workload: Workload, lines: int) -> dict[str, Any]:
    """The last `lines` lines of `workload`'s kept output (the workload already reached through access_workload),
    with when the agent read it; empty with `captured_at` null before any output arrived."""
    kept = WorkloadLog.objects.for_org(workload.lease.organization).filter(workload=workload).first()
    text = kept.text if kept is not None else ""
    parts = text.splitlines(keepends=True)
    shown = "".join(parts[-lines:])
    return {
        "workload": workload.pk,
        "server": workload.server_id,
        "state": workload.state,
        "text": shown,
        "lines": min(len(parts), lines),
        "truncated": (kept.truncated if kept is not None else False) or len(parts) > lines,
        "captured_at": kept.captured_at if kept is not None else None,
        "received_at": kept.received_at if kept is not None else None,
    }
