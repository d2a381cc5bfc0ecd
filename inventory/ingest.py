"""Agent enrolment and signed telemetry reports: the platform side of API.md's Agent section.

A report is accepted at most once: its `seq` is claimed with one conditional UPDATE of the server row
(`last_seq < seq`), in the same transaction that inserts its samples and updates the cards' health, so a
retry, a replay or a concurrent duplicate changes nothing.

What the answers promise (tests/inventory/test_ingest_killed.py kills the platform under reports to prove it):
- 202: the report's transaction has committed, with PostgreSQL's durable commit (synchronous_commit as the server
  is configured; on by default): its raw samples (one row per card, when its time is inside the raw window), its
  cards' health, drain and last sample, its health events, and the claim of its `seq` are all stored, once. The
  workload and volume states it carried are applied too (in a transaction of their own, after that one) before the
  202 is sent.
- 200 `{"accepted": false, "duplicate": true}`: a report with this `seq` or a later one was stored before; this
  copy changed nothing.
- no answer (the platform died, the connection broke): the report was stored completely or not at all, never in
  part; the agent sends it again with the same `seq`, and that copy is then answered 200 or 202 accordingly.
  Only its workload states can be missing after a 200 to such a re-send; the next report carries them again.
- 4xx: nothing of the report was stored (a report naming another server's card flags the server).
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import math
import operator
import secrets
import sys
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.utils import timezone

from accounts import parsers
from accounts.errors import DomainError, InvalidInput, Unauthenticated
from accounts.inputs import OUT_OF_TIME, storable, within_platform_time
from accounts.tenancy import platform_work
from inventory import health, secretbox, telemetry
from inventory.models import Gpu, GpuHealthEvent, Server
from inventory.services import enrollment_token_hash, server_enroll, server_outages_close

# Why these services run across tenants while a request is handled (accounts/tenancy.py).
_PLATFORM = "an agent reaches only its own server, found by its credential"

MAX_GPUS_PER_REPORT = 64
# Numeric sample fields: (lowest, highest) accepted. Anything else the agent sends is kept in `extra`.
_BOUNDS: dict[str, tuple[float, float]] = {
    "utilization_pct": (0, 100),
    "memory_util_pct": (0, 100),
    "memory_used_mb": (0, 10_000_000),
    "memory_total_mb": (0, 10_000_000),
    "temperature_c": (-50, 200),
    "power_w": (0, 100_000),
    "power_limit_w": (0, 100_000),
    "sm_clock_mhz": (0, 100_000),
    "mem_clock_mhz": (0, 100_000),
    "fan_pct": (0, 100),
    "ecc_sbe": (0, 2**62),
    "ecc_dbe": (0, 2**62),
    "ecc_sbe_aggregate": (0, 2**62),
    "ecc_dbe_aggregate": (0, 2**62),
    "retired_pages_sbe": (0, 2**31),
    "retired_pages_dbe": (0, 2**31),
    "remapped_rows_correctable": (0, 2**31),
    "remapped_rows_uncorrectable": (0, 2**31),
    "pcie_replay_count": (0, 2**62),
}
_FLAGS = ("retired_pages_pending", "remap_pending", "remap_failed", "event_wait_failed", "gpu_lost")


class BadSignature(Unauthenticated):
    code = "bad_signature"


@dataclass
class ReportResult:
    accepted: bool
    duplicate: bool = False
    samples: int = 0


# --- Signatures ------------------------------------------------------------------------------------------


def signature_for(secret: str, timestamp: str, body: bytes) -> str:
    """hex HMAC-SHA256 of "<timestamp>.<raw body>" keyed by the agent secret (API.md)."""
    return hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()


@platform_work(_PLATFORM)
def authenticate_report(*, agent_id: str, timestamp: str, signature: str, body: bytes, now: datetime) -> Server:
    """The server whose agent signed `body`, or 401. Refuses unknown agents, bad signatures, and timestamps
    further than AGENT_MAX_SKEW_SECONDS from `now` (replays of an old capture). One prepared statement."""
    try:
        agent_uuid = uuid.UUID(agent_id)
        sent = int(timestamp)
    except (TypeError, ValueError):
        raise BadSignature("Missing or malformed X-Agent-Id / X-Agent-Timestamp.") from None
    if abs(now.timestamp() - sent) > settings.SUANLI_AGENT_MAX_SKEW_SECONDS:
        raise BadSignature("X-Agent-Timestamp is too far from the platform clock.", code="stale_timestamp")
    names, sql = _server_sql()
    rows = _execute(sql, {"agent": agent_uuid})
    if not rows:
        raise BadSignature("Unknown agent.")
    server = Server.from_db(connection.alias, names, rows[0])
    expected = signature_for(_unsealed(server.agent_secret_sealed), timestamp, body)
    if not hmac.compare_digest(expected, (signature or "").strip().lower()):
        raise BadSignature("The report signature does not match.")
    return server


@functools.cache
def _server_sql() -> tuple[list[str], str]:
    """The enrolled server of an agent id, every column, as the ORM would read it (Server.from_db)."""
    fields_ = Server._meta.concrete_fields
    quote = connection.ops.quote_name
    columns = ", ".join(quote(field.column) for field in fields_)
    return [field.attname for field in fields_], (
        f"SELECT {columns} FROM {quote(Server._meta.db_table)} "  # noqa: S608 (names from the model)
        "WHERE agent_id = %(agent)s AND agent_secret_sealed <> ''"
    )


_UNSEALED: dict[str, str] = {}
_UNSEALED_MAX = 100_000


def _unsealed(sealed: str) -> str:
    """The agent secret sealed in `sealed`, decrypted once per process (Fernet's HMAC and AES cost more than the
    report's own signature check). Keyed by the sealed text, so new credentials are never answered from here."""
    secret = _UNSEALED.get(sealed)
    if secret is None:
        secret = secretbox.unseal(sealed)
        if len(_UNSEALED) >= _UNSEALED_MAX:
            _UNSEALED.clear()
        _UNSEALED[sealed] = secret
    return secret


# --- Enrolment -------------------------------------------------------------------------------------------


@platform_work(_PLATFORM)
def agent_enroll(*, enrollment_token: str, hostname: str, gpus: list[dict[str, Any]]) -> tuple[Server, str]:
    """Trade a one-time enrolment token for agent credentials, registering the server's GPUs.

    The token row is locked and spent in one transaction, so two agents racing with one token cannot both
    win. A re-enrolment (a fresh token for an enrolled server) must report the same cards; it rotates the
    secret and restarts `seq`. Fewer cards than registered are accepted and flagged on the server.
    """
    now = timezone.now()
    with transaction.atomic():
        server = (
            Server.objects.select_for_update()
            .filter(enrollment_token_hash=enrollment_token_hash(enrollment_token or ""), enrollment_expires_at__gt=now)
            .exclude(enrollment_token_hash="")
            .first()
        )
        if server is None:
            raise EnrollmentRefused("The enrolment token is unknown, used or expired.")
        server = server_enroll(server=server, hostname=hostname, gpus=gpus, now=now)
        flag = f"the agent found {len(gpus)} of {server.gpu_count} GPUs" if len(gpus) < server.gpu_count else ""
        Server.objects.filter(pk=server.pk).update(hardware_flag=flag)
        agent_secret = agent_credentials_issue(server=server)
    return server, agent_secret


def agent_credentials_issue(*, server: Server) -> str:
    """New agent credentials for an enrolled server (the previous ones stop working); returns the secret,
    which is stored only encrypted. `seq` restarts."""
    agent_secret = secrets.token_urlsafe(32)
    server.agent_id = uuid.uuid4()
    server.agent_secret_sealed = secretbox.seal(agent_secret)
    server.last_seq = 0
    Server.objects.filter(pk=server.pk).update(
        agent_id=server.agent_id, agent_secret_sealed=server.agent_secret_sealed, last_seq=0
    )
    server.refresh_from_db()
    return agent_secret


class EnrollmentRefused(DomainError):
    status_code = 403
    code = "enrollment_refused"


# --- Reports ---------------------------------------------------------------------------------------------


def _number(value: Any, name: str, index: int) -> float | int:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise InvalidInput(f"gpus[{index}].{name} must be a finite number.", fields={"gpus": {index: {name: "number"}}})
    low, high = _BOUNDS[name]
    if not low <= value <= high:
        raise InvalidInput(f"gpus[{index}].{name} is out of range.", fields={"gpus": {index: {name: "range"}}})
    return value


def parse_report(body: bytes) -> dict[str, Any]:
    """Validate a report's shape and values; 400 with the first problem found."""
    return check_report(load_report(body))


def load_report(body: bytes) -> dict[str, Any]:
    """A report body as a JSON object; 400 otherwise. Decoded as the API's bodies are (accounts.parsers: NaN and
    Infinity refused, nesting over 64 levels refused before the decoder recurses). Lone surrogates are let through
    here: check_report refuses them where they matter, and free text (a workload's message) is cleaned instead."""
    try:
        payload = parsers.loads(body, allow_surrogates=True)
    except parsers.MalformedJson as exc:
        raise InvalidInput(f"The report is not valid JSON: {exc}", code="malformed_request") from None
    if not isinstance(payload, dict):
        raise InvalidInput("The report must be a JSON object.")
    return payload


def check_report(payload: dict[str, Any]) -> dict[str, Any]:
    """The telemetry part of a loaded report, checked: seq, sent_at and the samples of `gpus`."""
    seq = payload.get("seq")
    if isinstance(seq, bool) or not isinstance(seq, int) or not 1 <= seq < 2**63:
        raise InvalidInput("seq must be a positive integer.", fields={"seq": ["A positive integer is required."]})
    try:
        sent_at = datetime.fromisoformat(str(payload.get("sent_at")))
    except ValueError:
        raise InvalidInput("sent_at must be an ISO 8601 time.", fields={"sent_at": ["Invalid time."]}) from None
    if sent_at.tzinfo is None:
        raise InvalidInput("sent_at needs a UTC offset.", fields={"sent_at": ["A UTC offset is required."]})
    if not within_platform_time(sent_at):  # "9999-12-31T23:59:59-14:00" is past what UTC can hold
        raise InvalidInput("sent_at is outside the platform's calendar.", fields={"sent_at": [OUT_OF_TIME]})
    gpus = payload.get("gpus")
    if not isinstance(gpus, list) or not 0 < len(gpus) <= MAX_GPUS_PER_REPORT:
        raise InvalidInput("gpus must be a non-empty list.", fields={"gpus": ["A non-empty list is required."]})
    samples = []
    for index, raw in enumerate(gpus):
        uuid_ = raw.get("uuid") if isinstance(raw, dict) else None
        # Printable ASCII, as NVML writes them ("GPU-...", "MIG-..."): an unknown one is written to the server's flag.
        if not isinstance(uuid_, str) or not 0 < len(uuid_) <= 80 or not (uuid_.isascii() and uuid_.isprintable()):
            raise InvalidInput(f"gpus[{index}] needs a uuid.", fields={"gpus": {index: {"uuid": "required"}}})
        sample: dict[str, Any] = {"uuid": raw["uuid"]}
        for name, value in raw.items():
            bounds = _BOUNDS.get(name)
            if bounds is not None:
                if value is None:
                    continue
                kind = type(value)  # not isinstance: a bool is an int; NaN fails the comparison, infinity the bound
                ok = (kind is int or kind is float) and bounds[0] <= value <= bounds[1]
                sample[name] = value if ok else _number(value, name, index)  # _number says what is wrong
            elif name in _FLAGS:
                sample[name] = bool(value)
            elif name == "xid_errors":
                if not isinstance(value, list) or len(value) > 1000 or not all(isinstance(x, int) for x in value):
                    raise InvalidInput(f"gpus[{index}].xid_errors must be a list of integers.")
                sample[name] = value
            elif name == "throttle_reasons":
                if (
                    not isinstance(value, list)
                    or len(value) > 64
                    or not all(isinstance(x, str) and storable(x) for x in value)
                ):
                    # Kept in the card's last sample (jsonb): no NUL, no lone surrogate (accounts.inputs.storable).
                    raise InvalidInput(f"gpus[{index}].throttle_reasons must be a list of strings.")
                sample[name] = [x[:64] for x in value]
        samples.append(sample)
    if len({s["uuid"] for s in samples}) != len(samples):
        raise InvalidInput("A GPU appears twice in one report.", fields={"gpus": ["Duplicate uuid."]})
    return {"seq": seq, "sent_at": sent_at.astimezone(UTC), "gpus": samples}


def _state_of(card: _Card) -> health.GpuState:
    return health.GpuState(
        latched_reason=card.fault_latched_reason,
        pcie_replay_count=card.pcie_replay_count,
        pcie_seen_at=card.pcie_seen_at,
        thermal_since=card.thermal_since,
    )


@dataclass(slots=True)
class _Card:
    """One card of a report's server as the claim read (and locked) it: what the health rules start from and what
    the report writes back. Not a model instance: building eight of those a report was a measurable part of it."""

    id: int
    uuid: str
    health: str
    health_reason: str
    health_changed_at: datetime | None
    drained: bool
    drained_reason: str
    fault_latched_reason: str
    pcie_replay_count: int | None
    pcie_seen_at: datetime | None
    thermal_since: datetime | None
    last_sample: dict[str, Any] | None = None
    last_sample_at: datetime | None = None


class _NotClaimed(Exception):
    """Raised inside a report's transaction to roll back its claim: a seq already seen, or a GPU not the server's."""


@platform_work(_PLATFORM)
def report_ingest(*, server: Server, report: dict[str, Any], now: datetime) -> ReportResult:
    """Store one authenticated, parsed report exactly once and apply the health rules to its cards.

    Three statements and a commit: the claim of `seq` (`last_seq < seq`, one conditional UPDATE of the server row)
    and the read of the server's cards, locked, in one statement (_CLAIM_SQL); the health rules in Python; then the
    raw samples and the cards' new state in one statement (_WRITE_SQL); then COMMIT, before the caller answers.
    The cards are locked in primary-key order with no-key locks (the scheduler's allocation skips locked cards and
    only key-share-locks them for its allocations), so the health rules start from the last report's state and a
    drain or undrain committed meanwhile is neither missed nor written over. A report naming a card the server
    does not own is refused whole (its claim rolled back) and flags the server.
    """
    at = min(report["sent_at"], now + timedelta(seconds=settings.SUANLI_AGENT_MAX_SKEW_SECONDS))
    raw_start, raw_end = telemetry.raw_window(now)
    keep_raw = raw_start <= at < raw_end
    if keep_raw:
        telemetry.ensure_partition_for(at.date())
    try:
        with transaction.atomic():
            cards = _claim(server_id=server.pk, seq=report["seq"], now=now)
            unknown = [s["uuid"] for s in report["gpus"] if s["uuid"] not in cards]
            if not cards or unknown:
                raise _NotClaimed
            if server.status == Server.Status.UNREACHABLE:
                server_outages_close(server_id=server.pk, now=now)
            rows = []
            events: list[GpuHealthEvent] = []
            for sample in report["gpus"]:
                card = cards[sample["uuid"]]
                if keep_raw:
                    rows.append(_sample_row(sample, card=card))
                event = _apply_sample(sample, at=at, card=card, server=server)
                if event is not None:
                    events.append(event)
            _write(server_id=server.pk, at=at, rows=rows, cards=[cards[s["uuid"]] for s in report["gpus"]])
            if rows and now - at > telemetry.BACKFILL_AFTER:
                telemetry.note_backfill(server.pk, [at])
            if events:
                # The events are also the outbox the scheduler consumes (unhandled ones, oldest first) to move
                # leases off failed cards: written in this transaction, they cannot be lost or told twice.
                GpuHealthEvent.objects.bulk_create(events)
    except _NotClaimed:
        # Nothing of the report was kept. Either its seq was seen already, or it names a card that is not this
        # server's (checked against every card of the server, so also a server with none).
        known = set(Gpu.objects.filter(server_id=server.pk).values_list("uuid", flat=True))
        unknown = [s["uuid"] for s in report["gpus"] if s["uuid"] not in known]
        if unknown:
            Server.objects.filter(pk=server.pk).update(hardware_flag=f"unregistered GPU reported: {unknown[0]}"[:200])
            raise InvalidInput("The report names a GPU this server does not own.", code="unknown_gpu") from None
        return ReportResult(accepted=False, duplicate=True)
    return ReportResult(accepted=True, samples=len(rows))


def _sample_row(sample: dict[str, Any], *, card: _Card) -> dict[str, Any]:
    """The raw telemetry row of one card's sample (_WRITE_SQL's `samples`); unknown fields go to `extra`."""
    row = {name: sample.get(name) for name in _SAMPLE_VALUES}
    row["gpu_id"] = card.id
    row["extra"] = {k: v for k, v in sample.items() if k not in telemetry.SAMPLE_COLUMNS and k != "uuid"}
    return row


def _apply_sample(sample: dict[str, Any], *, at: datetime, card: _Card, server: Server) -> GpuHealthEvent | None:
    """Apply the health rules to one (locked) card's sample, in memory: its new health, drain, rule state and
    last sample. The health event to write when its health or reason changed, else None."""
    event = None
    verdict = health.evaluate(sample, _state_of(card), at)
    if verdict.health != card.health or verdict.reason != card.health_reason:
        event = GpuHealthEvent(
            gpu_id=card.id,
            server_id=server.pk,
            at=at,
            from_health=card.health,
            to_health=verdict.health,
            reason=verdict.reason[:300],
        )
        card.health, card.health_reason, card.health_changed_at = verdict.health, verdict.reason[:300], at
        if verdict.latch and not card.drained:
            card.drained, card.drained_reason = True, f"automatic: {verdict.reason}"[:200]
    card.fault_latched_reason = verdict.state.latched_reason[:300]
    card.pcie_replay_count = verdict.state.pcie_replay_count
    card.pcie_seen_at = verdict.state.pcie_seen_at
    card.thermal_since = verdict.state.thermal_since
    card.last_sample, card.last_sample_at = sample, at
    return event


_GPU_REPORT_FIELDS = [
    "health",
    "health_reason",
    "health_changed_at",
    "drained",
    "drained_reason",
    "fault_latched_reason",
    "pcie_replay_count",
    "pcie_seen_at",
    "thermal_since",
    "last_sample",
    "last_sample_at",
]


# The numeric columns of a raw sample that come straight from the agent's fields (telemetry.SAMPLE_COLUMNS less
# ts, gpu_id, server_id and extra), with their types in the raw table.
_SAMPLE_VALUES = {
    "utilization_pct": "real",
    "memory_used_mb": "integer",
    "temperature_c": "real",
    "power_w": "real",
    "sm_clock_mhz": "integer",
    "ecc_sbe": "bigint",
    "ecc_dbe": "bigint",
}
_CARD_COLUMNS = tuple(field.name for field in fields(_Card) if field.name not in ("last_sample", "last_sample_at"))


def _execute(sql: str, params: dict[str, Any], *, rows: bool = True) -> list[tuple[Any, ...]]:
    """Run one of this module's statements on the request's connection, in its transaction, as a prepared statement
    (server-side binding: PostgreSQL parses and plans each of them once per connection, not once per report).
    Database errors reach the caller as Django's (a DataError is then a 400, as anywhere in the API)."""
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        # Django turns psycopg's automatic preparing off (for connection poolers in transaction mode); its own
        # cursors bind on the client and never prepare. This lets the statements that ask for it be prepared; put
        # a pooler in front of PostgreSQL in session mode, or one that tracks prepared statements (PgBouncer 1.21+).
        raw.prepare_threshold = sys.maxsize
    with connection.wrap_database_errors, psycopg.Cursor(raw) as cursor:
        cursor.execute(sql, params, prepare=True)
        return cursor.fetchall() if rows else []


def _claim(*, server_id: int, seq: int, now: datetime) -> dict[str, _Card]:
    """Claim `seq` for the server and read its cards, locked; {} when the seq was seen already (nothing claimed)."""
    rows = _execute(_claim_sql(), {"server": server_id, "seq": seq, "now": now})
    return {row[1]: _Card(*row) for row in rows}


def _write(*, server_id: int, at: datetime, rows: list[dict[str, Any]], cards: list[_Card]) -> None:
    """The report's raw samples and its cards' new state (`_GPU_REPORT_FIELDS`), in one statement."""
    sql, columns, values = _write_sql()
    states = [dict(zip(columns, values(card), strict=True)) for card in cards]
    params = {"server": server_id, "at": at, "samples": json.dumps(rows), "cards": json.dumps(states, default=_iso)}
    _execute(sql, params, rows=False)


def _iso(value: Any) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON")


@functools.cache
def _claim_sql() -> str:
    quote = connection.ops.quote_name
    server, gpu = quote(Server._meta.db_table), quote(Gpu._meta.db_table)
    columns = ", ".join(f"g.{quote(Gpu._meta.get_field(name).column)}" for name in _CARD_COLUMNS)
    return (
        f"WITH claim AS (UPDATE {server} SET last_seq = %(seq)s, last_seen_at = %(now)s, "  # noqa: S608 (names are ours)
        f"status = '{Server.Status.ONLINE}' WHERE id = %(server)s AND last_seq < %(seq)s RETURNING id) "
        f"SELECT {columns} FROM {gpu} AS g WHERE g.server_id = (SELECT id FROM claim) "
        "ORDER BY g.id FOR NO KEY UPDATE OF g"
    )


@functools.cache
def _write_sql() -> tuple[str, list[str], Callable[[_Card], tuple[Any, ...]]]:
    """The statement that writes a report, the columns of a card's state it takes, and their values of a card.

    The samples are inserted into the partitioned raw table (PostgreSQL routes each row to its day) by a
    data-modifying CTE, which runs to completion whatever the rest of the statement reads; the cards are updated
    from one JSON parameter. A varchar's length is left out of the record type, so an over-long value is refused
    by the column (a 400), not cut short by a cast."""
    meta = Gpu._meta
    quote = connection.ops.quote_name
    fields_ = [meta.pk, *(meta.get_field(name) for name in _GPU_REPORT_FIELDS)]
    record = ", ".join(f"{quote(field.column)} {field.db_type(connection).split('(')[0]}" for field in fields_)
    sample_record = ", ".join(
        ["gpu_id bigint", *(f"{name} {kind}" for name, kind in _SAMPLE_VALUES.items()), "extra jsonb"]
    )
    sample_columns = ", ".join(_SAMPLE_VALUES)
    sql = (
        f"WITH samples AS (INSERT INTO {telemetry.RAW} (ts, gpu_id, server_id, {sample_columns}, extra) "  # noqa: S608
        f"SELECT %(at)s, s.gpu_id, %(server)s, {', '.join(f's.{name}' for name in _SAMPLE_VALUES)}, s.extra "
        f"FROM jsonb_to_recordset(%(samples)s::jsonb) AS s ({sample_record})) "
        f"UPDATE {quote(meta.db_table)} AS g SET "
        + ", ".join(f"{quote(field.column)} = v.{quote(field.column)}" for field in fields_[1:])
        + f" FROM jsonb_to_recordset(%(cards)s::jsonb) AS v ({record})"
        + f" WHERE g.{quote(meta.pk.column)} = v.{quote(meta.pk.column)}"
    )
    names = ["id" if field is meta.pk else field.attname for field in fields_]
    return sql, [field.column for field in fields_], operator.attrgetter(*names)
