"""Housekeeping of API state: expired Idempotency-Key records."""

from django.utils import timezone

from accounts.models import IdempotencyRecord


def purge_expired() -> int:
    """Delete idempotency records past their expiry (idempotent; safe to run concurrently)."""
    deleted, _ = IdempotencyRecord.objects.filter(expires_at__lt=timezone.now()).delete()
    return deleted
