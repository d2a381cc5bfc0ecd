"""Writes done at most once per organisation, scope and key, on accounts.IdempotencyRecord: `run_once`, which the
pages' forms call with their hidden key, and `run_idempotent`, its adapter for API requests (`Idempotency-Key`).

The same key and the same body answer the first answer again (status and body); the same key with another body
is 409 `idempotency_key_reused`. The record is inserted in the transaction that does the work, so a concurrent
retry with the same key waits on the unique index until the first commits, then replays its answer. Outcomes
of the domain (201, 200, 409 no_capacity, ...) are kept; malformed input (400) and failures of ours or of a
provider we call (5xx) are not, so a fixed or later retry does the work.
Records live SUANLI_IDEMPOTENCY_TTL_HOURS (at least 24 h); accounts.purge_expired deletes them after.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request

from accounts.errors import Conflict, DomainError, InvalidInput, error_body
from accounts.models import IdempotencyRecord, Organization

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 200


def request_hash(scope: str, data: Any) -> str:
    canonical = json.dumps({"scope": scope, "body": data}, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def _plain(body: Any) -> Any:
    return json.loads(JSONRenderer().render(body))


def run_idempotent(request: Request, *, scope: str, work: Callable[[], tuple[int, Any]]) -> tuple[int, Any]:
    """`run_once` for an API request: its organisation, its `Idempotency-Key` header and its body (parsed only
    when the request has a well-formed key, so a request without one fails, if at all, in `work`)."""
    key = request.headers.get(HEADER)
    if key is None:
        return work()
    _check_key(key)
    return run_once(org=request.org, scope=scope, key=key, payload=request.data, work=work)


def _check_key(key: str) -> None:
    if not key.strip() or len(key) > MAX_KEY_LENGTH:
        message = f"{HEADER} must be 1 to {MAX_KEY_LENGTH} characters."
        raise InvalidInput(message, fields={HEADER: [message]})


def run_once(
    *, org: Organization, scope: str, key: str | None, payload: Any, work: Callable[[], tuple[int, Any]]
) -> tuple[int, Any]:
    """Run `work` (returning status and JSON body) at most once per organisation, scope and key.

    `payload` is what the caller asked (the request body, a form's fields): the same key with another payload is
    refused. Without a key, `work` simply runs. Inserts the record in the transaction of the work (see above).
    """
    if key is None:
        return work()
    _check_key(key)
    digest = request_hash(scope, payload)
    now = timezone.now()
    # A minute over, so the record outlives its promise even counted from its own created_at.
    ttl = timedelta(hours=max(24, settings.SUANLI_IDEMPOTENCY_TTL_HOURS), minutes=1)
    with transaction.atomic():
        # An expired record no longer counts (purge_expired may not have run yet).
        IdempotencyRecord.objects.for_org(org).filter(scope=scope, key=key, expires_at__lte=now).delete()
        try:
            with transaction.atomic():
                record = IdempotencyRecord.objects.create(
                    organization=org, scope=scope, key=key, request_hash=digest, expires_at=now + ttl
                )
        except IntegrityError:
            record = IdempotencyRecord.objects.for_org(org).get(scope=scope, key=key)
            if record.request_hash != digest:
                raise Conflict(
                    "This Idempotency-Key was used with a different request.", code="idempotency_key_reused"
                ) from None
            return record.status_code or 200, record.response_body
        try:
            with transaction.atomic():
                status, body = work()
        except DomainError as exc:
            if exc.status_code in (400, 402) or exc.status_code >= 500:
                raise
            status, body = exc.status_code, error_body(exc.code, exc.message, exc.fields, exc.extra)
        body = _plain(body)
        IdempotencyRecord.objects.for_org(org).filter(pk=record.pk).update(status_code=status, response_body=body)
    return status, body
