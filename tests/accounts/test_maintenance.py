"""`manage.py purge_expired`, the command behind the beat job accounts.purge_expired: expired Idempotency-Key
records go, live ones stay, and running it again deletes nothing more."""

from __future__ import annotations

import io
from datetime import timedelta

from django.core.management import call_command
from django.utils import timezone

from accounts.models import IdempotencyRecord


def _record(alice, key: str, expires_in: timedelta) -> IdempotencyRecord:
    return IdempotencyRecord.objects.create(
        organization=alice.org,
        key=key,
        scope="lease.create",
        request_hash="0" * 64,
        expires_at=timezone.now() + expires_in,
    )


def test_purge_expired_deletes_only_expired_records(alice):
    _record(alice, "old", timedelta(seconds=-1))
    live = _record(alice, "live", timedelta(hours=1))
    for expected in ("purged: 1", "purged: 0"):
        out = io.StringIO()
        call_command("purge_expired", stdout=out)
        assert out.getvalue().strip() == expected
    assert list(IdempotencyRecord.objects.all()) == [live]
