"""The organisation's log (issue 16): an append-only record of what happened to an organisation's volumes, leases
and money, shown to its members at /org/log/ and `GET /api/v1/org/events/`.

Services write it with `record(org, kind, ...)`, in their own transaction (a rolled-back change leaves no line); the
rows never change (accounts.models.OrgEvent, a trigger). Each kind has its words here, with named parameters that
`record` stores and `message` fills in the reader's language, so an event recorded in English reads in Chinese on
the Chinese page. A kind without words (one added by a later change) is shown by its name and parameters.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from django.db.models import QuerySet
from django.utils import timezone
from django.utils.dateparse import parse_datetime
from django.utils.translation import gettext
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization, OrgEvent, User

VOLUME_CREATED = "volume_created"
VOLUME_DELETED = "volume_deleted"
VOLUME_WIPED = "volume_wiped"
VOLUME_FAILED = "volume_failed"
VOLUME_MOVED = "volume_moved"
VOLUME_COPY_WIPED = "volume_copy_wiped"
GRACE_STARTED = "grace_started"
GRACE_RELEASED = "grace_released"
GRACE_ENDED = "grace_ended"
LEASE_STOPPED_FUNDS = "lease_stopped_funds"
DATA_ACCESS_OPENED = "data_access_opened"
DATA_ACCESS_ENDED = "data_access_ended"

MESSAGES = {
    VOLUME_CREATED: _("Volume %(name)s (%(size_gb)s GB) created on server %(server)s."),
    VOLUME_DELETED: _("Volume %(name)s deleted: its data on server %(server)s is to be wiped."),
    VOLUME_WIPED: _("Volume %(name)s wiped: server %(server)s reported its data destroyed at %(wiped_at)s."),
    VOLUME_FAILED: _("Volume %(name)s could not be made on server %(server)s: %(message)s"),
    VOLUME_MOVED: _("Volume %(name)s moved from server %(from_server)s to server %(to_server)s."),
    VOLUME_COPY_WIPED: _(
        "Volume %(name)s: its copy on server %(server)s, left by a move, was wiped: the server reported its data "
        "destroyed at %(wiped_at)s."
    ),
    GRACE_STARTED: _("The balance ran out: volume %(name)s is kept for a grace period and wiped at %(wipe_at)s."),
    GRACE_RELEASED: _("The balance recovered: volume %(name)s is kept again, with no wipe date."),
    GRACE_ENDED: _("The grace period is over: volume %(name)s is being wiped."),
    LEASE_STOPPED_FUNDS: _("Lease %(lease)s was ended: the balance ran out."),
    DATA_ACCESS_OPENED: _("Data access session %(session)s opened on server %(server)s for volumes %(volumes)s."),
    DATA_ACCESS_ENDED: _("Data access session %(session)s on server %(server)s ended: %(reason)s."),
}
# Words for the `reason` parameter's codes (a data-access session's end reason).
REASONS = {
    "deleted": _("ended by the customer"),
    "expired": _("its maximum duration passed"),
    "wiped": _("a volume of it was wiped"),
}
KINDS = tuple(MESSAGES)
# Parameters that hold a time (ISO 8601, stored in UTC): shown as "YYYY-MM-DD HH:MM UTC".
TIME_PARAMS = ("wiped_at", "wipe_at", "at")


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat()
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def record(
    org: Organization | int,
    kind: str,
    *,
    params: dict[str, Any] | None = None,
    actor: User | None = None,
    object_type: str = "",
    object_id: int | None = None,
    at: datetime | None = None,
) -> OrgEvent:
    """Append one event to `org`'s log: `kind` (one of KINDS, or a newer name), the message's `params` (datetimes
    stored as ISO strings in UTC), who did it (`actor`, None for the platform) and what it is about. Not
    idempotent by itself: callers record once per change they make, inside the transaction that makes it."""
    org_id = org if isinstance(org, int) else org.pk
    user = actor if actor is not None and getattr(actor, "is_authenticated", False) else None
    return OrgEvent.objects.create(
        organization_id=org_id,
        kind=kind[:40],
        params={str(k): _plain(v) for k, v in (params or {}).items()},
        actor=user,
        actor_email=user.email if user is not None else "",
        object_type=object_type[:40],
        object_id=object_id,
        at=at or timezone.now(),
    )


def events_of(org: Organization | None) -> QuerySet[OrgEvent]:
    """The organisation's log, newest first (nothing without an organisation)."""
    return OrgEvent.objects.for_org(org).select_related("actor").order_by("-id")


def _shown(name: str, value: Any) -> str:
    if name == "reason" and value in REASONS:
        return str(REASONS[value])
    if name in TIME_PARAMS and isinstance(value, str):
        when = parse_datetime(value)
        if when is not None:
            return when.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return "—" if value is None or value == "" else str(value)


class _Params(dict):
    def __missing__(self, key: str) -> str:
        return "—"


def message(event: OrgEvent) -> str:
    """The event in the active language, its parameters filled in."""
    params = _Params({k: _shown(k, v) for k, v in (event.params or {}).items()})
    words = MESSAGES.get(event.kind)
    if words is None:
        detail = ", ".join(f"{k}={v}" for k, v in sorted(params.items()))
        return f"{event.kind}: {detail}" if detail else event.kind
    return str(words) % params


def actor_text(event: OrgEvent) -> str:
    """Who did it: the member's e-mail, or the platform."""
    if event.actor_email:
        return event.actor_email
    return gettext("Suanli (the platform)")
