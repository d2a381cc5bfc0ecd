"""Volumes when an organisation's money runs out (issue 16): kept for a grace period, then wiped, never at once.

When the funds job stops an organisation (billing/funds.py), its volumes go into grace until now +
SUANLI_VOLUME_GRACE_DAYS (workloads.volumes.volumes_hold): kept on their servers, no longer mountable by a new
workload. When it recovers (a top-up) they are released (volumes_release). Its owners, admins and billing members
are e-mailed when volumes enter grace (with the wipe date), 3 days and 1 day before it, and when their data is
wiped: each once per volume and grace period (VolumeNotice rows, unique per volume, kind and wipe date).

The funds job (every minute) sends the reminders that are due (`volumes_remind`). Workloads' wipe job
(workloads.volumes.wipe_volumes, beat every 5 minutes) moves the volumes whose grace is over to wiping (their agents
destroy the data) and calls `volumes_wiping_tell`, registered in billing's AppConfig.ready, which tells their
organisations. A volume is billed until its data is wiped, grace included (billing/metering.py).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from accounts import org_log
from accounts.models import Organization
from accounts.tenancy import platform_work
from billing.models import VolumeNotice
from billing.notify import mail_org
from workloads.models import Volume, VolumeState
from workloads.volumes import volumes_hold, volumes_release

_PLATFORM = "the grace of volumes is watched for every organisation that ran out of money"

# The reminders before a wipe, the nearest last: a volume gets the nearest one due (once each).
REMINDERS = ((VolumeNotice.Kind.DAYS_1, timedelta(days=1)), (VolumeNotice.Kind.DAYS_3, timedelta(days=3)))


def grace_period() -> timedelta:
    return timedelta(days=settings.SUANLI_VOLUME_GRACE_DAYS)


def _when(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _listing(volumes: Iterable[Volume], *, wipe_dates: bool = True) -> str:
    lines = []
    for volume in volumes:
        line = f"- {volume.name} ({volume.size_gb} GB)"
        if wipe_dates and volume.wipe_at is not None:
            line += f": wiped at {_when(volume.wipe_at)}"
        lines.append(line)
    return "\n".join(lines)


def _noticed(volumes: Iterable[Volume], kind: str, now: datetime, wipe_at=None) -> list[Volume]:
    """Record `kind` for each volume (at its wipe date, or `wipe_at(volume)`); returns those told for the first
    time. The database keeps one notice per volume, kind and wipe date, so concurrent jobs tell once."""
    told = []
    for volume in volumes:
        when = wipe_at(volume) if wipe_at else volume.wipe_at
        try:
            with transaction.atomic():
                _, created = VolumeNotice.objects.get_or_create(
                    volume=volume,
                    kind=kind,
                    wipe_at=when,
                    defaults={"organization_id": volume.organization_id, "created_at": now},
                )
        except IntegrityError:
            created = False  # another run told it first
        if created:
            told.append(volume)
    return told


def _site(path: str) -> str:
    return f"{settings.SITE_URL.rstrip('/')}{path}"


def _reach() -> str:
    """How the organisation reaches its data meanwhile (workloads.data_access), said in the grace e-mails."""
    return (
        "Meanwhile you can reach their data without renting a card: open a data-access session (a small container "
        f"with SSH and the volumes at /data/<name>, charged per hour) on the Volumes page: "
        f"{_site('/volumes/#data-access')}\n"
    )


@platform_work(_PLATFORM)
def volumes_grace_start(*, org: Organization, now: datetime | None = None) -> list[Volume]:
    """The organisation ran out of money: its volumes (creating, ready or in use) are kept until now + the grace
    period, and it is told which and when they are wiped. Volumes in grace already keep their date. Returns the
    volumes it was told about now."""
    now = now or timezone.now()
    volumes_hold(org=org, wipe_at=now + grace_period(), now=now)
    held = list(Volume.objects.for_org(org).filter(state=VolumeState.GRACE).order_by("wipe_at", "name"))
    told = _noticed(held, VolumeNotice.Kind.GRACE, now)
    for volume in told:  # each volume's grace begins once per wipe date (its notice is unique): logged once
        _log(volume, org_log.GRACE_STARTED, now, wipe_at=volume.wipe_at)
    if told:
        mail_org(
            org,
            "Your Suanli volumes will be wiped unless you top up",
            f"{org.name}'s balance ran out. Its volumes are kept, and billed, for a grace period of "
            f"{settings.SUANLI_VOLUME_GRACE_DAYS} days; their data is wiped at the end of it unless you top up "
            f"first:\n\n{_listing(told)}\n\nNew workloads cannot mount them until then. Top up: "
            f"{_site('/balance/')}\n\n{_reach()}",
        )
    return told


@platform_work(_PLATFORM)
def volumes_grace_end(*, org: Organization, now: datetime | None = None) -> int:
    """The organisation recovered: its volumes in grace are kept again (no wipe date), each logged in its
    organisation's log. Locks those volumes. Returns how many."""
    if not Volume.objects.for_org(org).filter(state=VolumeState.GRACE).exists():
        return 0
    now = now or timezone.now()
    with transaction.atomic():
        held = list(Volume.objects.for_org(org).filter(state=VolumeState.GRACE).select_for_update().order_by("id"))
        released = volumes_release(org=org)
        for volume in held:
            _log(volume, org_log.GRACE_RELEASED, now)
    return released


def _log(volume: Volume, kind: str, at: datetime, **params) -> None:
    org_log.record(
        volume.organization_id,
        kind,
        params={"name": volume.name, "size_gb": volume.size_gb, "server": volume.server_id, **params},
        object_type="volume",
        object_id=volume.pk,
        at=at,
    )


def volumes_wiping_tell(volumes: list[Volume]) -> int:
    """Tell each organisation which of its volumes were just sent to wiping (once per volume). Registered with
    workloads.volumes.wipe_volumes (the beat job `wipe-volumes`, `manage.py wipe_volumes`) in billing's
    AppConfig.ready, so workloads wipes without knowing billing. Returns how many volumes were told about."""
    now = timezone.now()
    by_org: dict[int, list[Volume]] = defaultdict(list)
    for volume in _noticed(volumes, VolumeNotice.Kind.WIPING, now, wipe_at=lambda v: v.wipe_requested_at or now):
        by_org[volume.organization_id].append(volume)
    for _org_id, told in sorted(by_org.items()):
        org = told[0].organization
        mail_org(
            org,
            "Your Suanli volumes are being wiped",
            f"{org.name}'s grace period is over and its balance was not topped up, so the data of these volumes "
            f"is being destroyed now:\n\n{_listing(told, wipe_dates=False)}\n\nIt cannot be recovered. "
            f"Billing for them stops when their servers report the data gone.\n",
        )
    return sum(len(told) for told in by_org.values())


@platform_work(_PLATFORM)
def volumes_remind(*, now: datetime | None = None) -> int:
    """Each volume in grace within 3 days (or 1 day) of its wipe gets that reminder once, one e-mail per
    organisation and reminder (run by the funds job every minute). Returns how many volumes were reminded."""
    return _remind(now or timezone.now())


def _remind(now: datetime) -> int:
    """Each volume in grace within 3 days (or 1 day) of its wipe gets that reminder once; one e-mail per
    organisation and reminder."""
    pending = list(
        Volume.objects.unscoped(_PLATFORM)
        .filter(state=VolumeState.GRACE, wipe_at__gt=now, wipe_at__lte=now + REMINDERS[-1][1])
        .select_related("organization")
        .order_by("organization_id", "wipe_at", "id")
    )
    groups: dict[tuple[int, str], list[Volume]] = defaultdict(list)
    for volume in pending:
        kind = next(kind for kind, ahead in REMINDERS if volume.wipe_at <= now + ahead)
        for told in _noticed([volume], kind, now):
            groups[(told.organization_id, kind)].append(told)
    for (_org_id, kind), volumes in sorted(groups.items()):
        org = volumes[0].organization
        days = "1 day" if kind == VolumeNotice.Kind.DAYS_1 else "3 days"
        mail_org(
            org,
            f"Your Suanli volumes will be wiped in {days}",
            f"{org.name}'s balance is still out. The data of these volumes is wiped at the end of their grace "
            f"period unless you top up first:\n\n{_listing(volumes)}\n\nTop up: {_site('/balance/')}\n\n{_reach()}",
        )
    return sum(len(volumes) for volumes in groups.values())
