"""Money before compute: admitting a lease only if its organisation can pay for it, and stopping card-hour leases
after a notice when its money runs out (services; the formula is billing/balances.py's).

**Admission** (registered with scheduler/admission.py, so it runs inside `lease_create` and a growing
`lease_resize`, under the organisation's row lock, after the cards are placed and priced): the new cards' minimum
(SUANLI_ADMISSION_MINIMUM_SECONDS of their price, one hour by default, from the lease's start: a reservation's
first hour; a contract's first month, up to its end) must fit in what is available less that much of what already
runs and less the first period of each reservation not started yet. Otherwise 402 `insufficient_funds` with the
shortfall, and the transaction rolls back: nothing is allocated. A monthly spend cap is checked the same way
against the month's spending. Because the check and the allocation share the lock and the transaction, concurrent
requests are admitted one after another, each seeing the ones before it running or reserved.

**Running out** (`funds_check`, beat every minute): an organisation whose available amount will be gone within
SUANLI_FUNDS_NOTICE_SECONDS at its burn gets a notice (e-mail to its owners, admins and billing members, and a
banner on the site), once until it recovers. When it is out and the notice has been out that long, its card-hour
leases end (`end_reason` funds_exhausted, in the event log; their workloads stop as at any end) and the time they
ran is billed. Contracts are not stopped: they run on credit and the notice names them for staff. Nothing is
deleted. After a stop the organisation is not told or stopped again until it recovers (its `stopped` notice stays
open until then), unless it has card-hour leases again. The same job e-mails spend alerts at each share of a
monthly cap (once per month and share).

**Volumes** (issue 16) are admitted like leases (`admit_volume`, registered with workloads.volumes: a new volume's
first minimum period of storage must fit; `admit_volume_move`, registered with workloads.volume_moves: so must a
volume's at the higher price of the server it is asked to move to), are billed until wiped, so they count in the
burn, and an organisation with volumes is watched like one with leases. A stop puts its volumes into a grace period
(billing/grace.py: kept, wiped after SUANLI_VOLUME_GRACE_DAYS unless it pays, with e-mails on the way); recovering
releases them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import OuterRef, Subquery
from django.utils import timezone
from rest_framework import status

from accounts import org_log
from accounts.errors import DomainError, InvalidInput, InvalidTransition
from accounts.models import Organization
from accounts.tenancy import platform_work
from billing import rating
from billing.balances import Standing, standing
from billing.grace import volumes_grace_end, volumes_grace_start, volumes_remind
from billing.ledger import _money
from billing.models import BillingTerms, FundsNotice, SpendLimit
from billing.notify import mail_org as _mail
from billing.terms import default_terms
from scheduler import services as scheduler_services
from scheduler.models import Allocation, Lease, LeaseState, Plan
from workloads.models import Volume, VolumeMove, VolumeState

logger = logging.getLogger(__name__)

_PLATFORM = "the funds job looks at every organisation with running leases; admission at the one asking"


class InsufficientFunds(DomainError):
    """402: the organisation's money (or its spend cap) cannot cover the lease; `extra` carries the shortfall."""

    status_code = status.HTTP_402_PAYMENT_REQUIRED
    code = "insufficient_funds"


def _minimum_hours() -> Decimal:
    return Decimal(settings.SUANLI_ADMISSION_MINIMUM_SECONDS) / 3600


def minimum_cost(plan: str, new: list[Allocation]) -> Decimal:
    """What the new allocations must be covered for: the minimum period of card time from each one's start, or a
    contract's first calendar month (each up to its own end)."""
    rates: dict[tuple[datetime, datetime], Decimal] = defaultdict(Decimal)
    for allocation in new:
        start = allocation.period.lower
        if plan == Plan.CARD_HOUR:
            end = start + timedelta(seconds=settings.SUANLI_ADMISSION_MINIMUM_SECONDS)
        else:
            end = rating.month_bounds(start)[1]
        if allocation.period.upper is not None:
            end = min(end, allocation.period.upper)
        rates[(start, end)] += Decimal(allocation.unit_price) * Decimal(allocation.units)
    return sum(
        (
            rating.estimate(plan=plan, unit_price=rate, units=Decimal(1), start=start, end=end).amount
            for (start, end), rate in rates.items()
        ),
        Decimal(0),
    )


def _reserved(org: Organization, exclude: list[int]) -> Decimal:
    """What the organisation's reservations (scheduled leases) keep of its balance: each one's first period, as it
    was admitted with, leaving out the allocations `exclude` names."""
    per_lease: dict[int, list[Allocation]] = defaultdict(list)
    plans: dict[int, str] = {}
    held = (
        Allocation.objects.for_org(org)
        .filter(lease__state=LeaseState.SCHEDULED)
        .exclude(pk__in=exclude)
        .select_related("lease")
    )
    for allocation in held:
        per_lease[allocation.lease_id].append(allocation)
        plans[allocation.lease_id] = allocation.lease.plan
    return sum((minimum_cost(plans[lease_id], rows) for lease_id, rows in per_lease.items()), Decimal(0))


def _to_check(org_id: int) -> tuple[Organization, Decimal | None] | None:
    """The organisation to admit against, its row locked (admissions of one organisation go one at a time), with
    its monthly cap; None, and no lock taken, when nothing limits it: postpaid without a credit limit and no cap.

    Whether anything limits it is one statement (its cap and its latest terms beside its currency; `terms_of`'s
    answer), so an organisation nothing limits, most admissions, costs one round trip."""
    terms = BillingTerms.objects.unscoped(_PLATFORM).filter(organization_id=OuterRef("pk")).order_by("-id")
    caps = SpendLimit.objects.unscoped(_PLATFORM).filter(organization_id=OuterRef("pk")).order_by("pk")
    row = (
        Organization.objects.filter(pk=org_id)
        .annotate(
            cap=Subquery(caps.values("monthly_cap")[:1]),
            terms_id=Subquery(terms.values("pk")[:1]),
            terms_limit=Subquery(terms.values("credit_limit")[:1]),
        )
        .values("currency", "cap", "terms_id", "terms_limit")
        .get()
    )
    if row["terms_id"] is not None:
        limited = row["terms_limit"] is not None  # Terms.limited of its latest row
    else:
        limited = default_terms(row["currency"]).limited
    if not limited and row["cap"] is None:
        return None
    return Organization.objects.select_for_update().get(pk=org_id), row["cap"]


@platform_work(_PLATFORM)
def admit(lease: Lease, new: list[Allocation], now: datetime) -> None:
    """Raise InsufficientFunds unless the lease's organisation can pay for `new` (see the module's docstring)."""
    checked = _to_check(lease.organization_id) if new else None
    if checked is None:
        return
    org, cap = checked
    excluded = [a.pk for a in new if a.pk is not None]  # rows already written (admission may come before)
    now_standing = standing(org, now=now, exclude=excluded)
    _afford(now_standing, minimum_cost(lease.plan, new), cap, reserved=_reserved(org, excluded), what="lease")


@platform_work(_PLATFORM)
def admit_volume(volume: Volume, now: datetime) -> None:
    """Raise InsufficientFunds unless the volume's organisation can pay for the volume just made (registered with
    workloads.volumes, run inside `volume_create` under the server's lock): its first SUANLI_ADMISSION_MINIMUM_SECONDS
    of storage, on top of that much of what already runs, as for a lease."""
    checked = _to_check(volume.organization_id)
    if checked is None:
        return
    org, cap = checked
    minimum = timedelta(seconds=settings.SUANLI_ADMISSION_MINIMUM_SECONDS)
    need = rating.estimate(
        plan=Plan.SERVER_MONTH,  # per GB-month, per second of the calendar month (billing/metering.py)
        unit_price=volume.price_per_gb_month,
        units=Decimal(volume.size_gb),
        start=now,
        end=now + minimum,
    ).amount
    now_standing = standing(org, now=now)
    own = now_standing.burn_per_volume.get(volume.pk, Decimal(0))
    _afford(now_standing, need, cap, reserved=_reserved(org, []), what="volume", own_burn=own)


@platform_work(_PLATFORM)
def admit_volume_move(move: VolumeMove, now: datetime) -> None:
    """Raise InsufficientFunds unless the organisation can pay for its volume at the price of the server it is asked
    to move to (registered with workloads.volume_moves, run inside `move_request`): when that price is higher, the
    volume's first SUANLI_ADMISSION_MINIMUM_SECONDS at it must fit as for a new volume, its burn at the old price
    left out. A move to storage that costs no more is admitted (it spends no more than what runs already)."""
    if move.target_price <= move.source_price:
        return
    checked = _to_check(move.organization_id)
    if checked is None:
        return
    org, cap = checked
    minimum = timedelta(seconds=settings.SUANLI_ADMISSION_MINIMUM_SECONDS)
    need = rating.estimate(
        plan=Plan.SERVER_MONTH,
        unit_price=move.target_price,
        units=Decimal(move.volume.size_gb),
        start=now,
        end=now + minimum,
    ).amount
    now_standing = standing(org, now=now)
    own = now_standing.burn_per_volume.get(move.volume_id, Decimal(0))
    _afford(now_standing, need, cap, reserved=_reserved(org, []), what="volume move", own_burn=own)


def _afford(
    money: Standing, need: Decimal, cap: Decimal | None, *, reserved: Decimal, what: str, own_burn: Decimal = Decimal(0)
) -> None:
    """Raise InsufficientFunds unless `need` fits in what is available less the minimum period of what already runs
    (the thing being admitted, `own_burn` of it, left out) and `reserved`, and under the monthly cap."""
    running = rating.to_money((money.burn_per_hour - own_burn) * _minimum_hours())
    currency = money.currency
    free = None if money.available is None else money.available - running - reserved
    if free is not None and need > free:
        shortfall = need - free
        raise InsufficientFunds(
            f"Your balance cannot cover this {what}: it needs {need} {currency} for its first period and "
            f"{shortfall} {currency} more than is available. Top up, or ask for a credit limit.",
            extra={"shortfall": str(shortfall), "needed": str(need), "currency": currency},
        )
    if cap is not None and need > cap - money.month_to_date - running:
        shortfall = need - (cap - money.month_to_date - running)
        raise InsufficientFunds(
            f"This {what} would take this month's spending past your cap of {cap} {currency} "
            f"(by {shortfall} {currency}). Raise the cap to rent it.",
            extra={"shortfall": str(shortfall), "needed": str(need), "currency": currency, "limit": "monthly_cap"},
        )


# --- spend limits ----------------------------------------------------------------------------------------------


@platform_work(_PLATFORM)
def spend_limit_set(*, org: Organization, monthly_cap: Any, alert_at: list[Any] | None = None) -> SpendLimit:
    """A customer sets its monthly cap (None: no cap) and the shares of it at which it is e-mailed (1 to 5 of them,
    each above 0 and at most 1; the site's default, 50 % and 90 %, when not given)."""
    cap = None if monthly_cap is None else _money(monthly_cap, "monthly_cap")
    shares = list(settings.SUANLI_SPEND_ALERTS) if alert_at is None else alert_at
    try:
        cleaned = sorted({Decimal(str(share)) for share in shares})
    except (ArithmeticError, TypeError):
        cleaned = []
    if not 1 <= len(cleaned) <= 5 or not all(share.is_finite() and 0 < share <= 1 for share in cleaned):
        message = "From one to five shares of the cap, each above 0 and at most 1 (e.g. [0.5, 0.9])."
        raise InvalidInput(message, fields={"alert_at": [message]})
    limit, _ = SpendLimit.objects.update_or_create(
        organization=org,
        defaults={"monthly_cap": cap, "alert_at": [str(share.normalize()) for share in cleaned]},
    )
    return limit


def spend_limit_of(org: Organization) -> tuple[Decimal | None, list[Decimal]]:
    """The organisation's monthly cap (None: none) and its alert shares."""
    limit = SpendLimit.objects.for_org(org).first()
    if limit is None:
        return None, list(settings.SUANLI_SPEND_ALERTS)
    shares = [Decimal(str(share)) for share in limit.alert_at] or list(settings.SUANLI_SPEND_ALERTS)
    return limit.monthly_cap, shares


# --- the job -------------------------------------------------------------------------------------------------


def _watched() -> list[Organization]:
    """Organisations with running or reserved leases, volumes not wiped (billed all the time), or an open notice
    (low, or stopped and not recovered): the ones whose money may move."""
    live = Lease.objects.unscoped("the funds job watches every organisation with leases").filter(
        state__in=[LeaseState.ACTIVE, LeaseState.SCHEDULED]
    )
    noticed = FundsNotice.objects.unscoped("open notices").filter(
        kind__in=[FundsNotice.Kind.LOW, FundsNotice.Kind.STOPPED], resolved_at__isnull=True
    )
    kept = Volume.objects.unscoped("the funds job watches every organisation with volumes").filter(
        state__in=[VolumeState.CREATING, VolumeState.READY, VolumeState.IN_USE, VolumeState.GRACE]
    )
    ids = set(live.values_list("organization_id", flat=True)) | set(noticed.values_list("organization_id", flat=True))
    ids |= set(kept.values_list("organization_id", flat=True))
    return list(Organization.objects.unscoped("the funds job").filter(pk__in=ids).order_by("pk"))


@platform_work(_PLATFORM)
def funds_check(*, now: datetime | None = None) -> dict[str, int]:
    """The beat job (see the module's docstring). Idempotent: a second run in the same minute changes nothing."""
    now = now or timezone.now()
    counts = {"notified": 0, "stopped": 0, "recovered": 0, "alerts": 0}
    for org in _watched():
        money = standing(org, now=now)
        if money.available is not None:
            for outcome in _low_funds(org, money, now):
                counts[outcome] += 1
        counts["alerts"] += _spend_alerts(org, money, now)
    counts["volume_reminders"] = volumes_remind(now=now)
    return counts


def _low_funds(org: Organization, money: Standing, now: datetime) -> list[str]:
    notice_seconds = settings.SUANLI_FUNDS_NOTICE_SECONDS
    open_notice = FundsNotice.objects.for_org(org).filter(kind=FundsNotice.Kind.LOW, resolved_at__isnull=True).first()
    runs_out = money.runs_out_at
    low = runs_out is not None and runs_out <= now + timedelta(seconds=notice_seconds)
    if not low:
        # Recovered: the open low notice, and a stop the organisation was still on credit after, are over.
        resolved = (
            FundsNotice.objects.for_org(org)
            .filter(kind__in=[FundsNotice.Kind.LOW, FundsNotice.Kind.STOPPED], resolved_at__isnull=True)
            .update(resolved_at=now)
        )
        released = volumes_grace_end(org=org, now=now)  # its volumes in grace are kept again
        return ["recovered"] if resolved or released else []
    if open_notice is None:
        if _on_credit(org) and not _card_hours(org).exists():
            # Stopped already and not recovered since: nothing more to say or stop, but a volume made since is
            # kept for a grace period of its own like the others (those in grace keep their date).
            volumes_grace_start(org=org, now=now)
            return []
        FundsNotice.objects.create(
            organization=org,
            kind=FundsNotice.Kind.LOW,
            available=money.available,
            currency=money.currency,
            runs_out_at=runs_out,
            created_at=now,
        )
        _mail(org, _low_subject(money), _low_body(org, money, notice_seconds))
        return ["notified"]
    if money.available > 0 or now < open_notice.created_at + timedelta(seconds=notice_seconds):
        return []
    return ["stopped"] if _stop(org, money, open_notice, now) else []


def _card_hours(org: Organization):
    """The organisation's card-hour leases that a stop ends: running or reserved."""
    return Lease.objects.for_org(org).filter(plan=Plan.CARD_HOUR, state__in=[LeaseState.ACTIVE, LeaseState.SCHEDULED])


def _on_credit(org: Organization) -> bool:
    """Whether the organisation was stopped and has not recovered since (its `stopped` notice is unresolved)."""
    return FundsNotice.objects.for_org(org).filter(kind=FundsNotice.Kind.STOPPED, resolved_at__isnull=True).exists()


def _stop(org: Organization, money: Standing, notice: FundsNotice, now: datetime) -> bool:
    """End the organisation's card-hour leases (funds_exhausted); flag its contracts for staff. The `stopped`
    notice stays unresolved until the organisation recovers: until then it is not noticed or stopped again unless
    it has card-hour leases again."""
    ended = []
    for lease in _card_hours(org):
        try:
            with transaction.atomic():
                scheduler_services.lease_end(lease=lease, now=now, reason="funds_exhausted")
                org_log.record(
                    org,
                    org_log.LEASE_STOPPED_FUNDS,
                    params={"lease": lease.pk},
                    object_type="lease",
                    object_id=lease.pk,
                    at=now,
                )
        except InvalidTransition:
            continue  # it ended meanwhile
        ended.append(lease.pk)
    contracts = Lease.objects.for_org(org).filter(state=LeaseState.ACTIVE).exclude(plan=Plan.CARD_HOUR).count()
    with transaction.atomic():
        FundsNotice.objects.filter(pk=notice.pk).update(resolved_at=now)
        FundsNotice.objects.create(
            organization=org,
            kind=FundsNotice.Kind.STOPPED,
            available=money.available,
            currency=money.currency,
            contracts_on_credit=contracts,
            leases_ended=len(ended),
            created_at=now,
        )
    if contracts:
        logger.warning(
            "funds: organisation %s is out of money (%s %s); %s contract(s) go on running on credit",
            org.pk,
            money.available,
            money.currency,
            contracts,
        )
    if ended:
        stopped = (
            f"so its card-hour leases were ended: {', '.join(str(pk) for pk in ended)}. The time they ran is billed; "
            f"nothing was deleted."
        )
    else:
        stopped = "and it has no card-hour leases to end."
    if contracts:
        stopped += f" Its {contracts} contract(s) go on running on credit; our staff will be in touch."
    _mail(
        org,
        "Your Suanli leases were stopped: your balance ran out" if ended else "Your Suanli balance has run out",
        f"{org.name}'s balance ran out ({money.available} {money.currency} available), {stopped}\n\n"
        f"Top up to rent again: {settings.SITE_URL.rstrip('/')}/balance/\n",
    )
    volumes_grace_start(org=org, now=now)  # its volumes are kept for the grace period, then wiped (its own e-mail)
    return bool(ended)


def _spend_alerts(org: Organization, money: Standing, now: datetime) -> int:
    """E-mail once per month and share of the cap that the month's spending has reached."""
    cap, shares = spend_limit_of(org)
    if not cap:
        return 0
    period = money.this_month.period
    sent = 0
    for share in sorted(shares):
        if money.month_to_date < cap * share:
            break
        _, created = FundsNotice.objects.get_or_create(
            organization=org,
            kind=FundsNotice.Kind.CAP_ALERT,
            period=period,
            threshold=share,
            defaults={"available": money.month_to_date, "currency": money.currency, "created_at": now},
        )
        if created:
            sent += 1
            _mail(
                org,
                f"Suanli spend alert: {share * 100:.0f} % of your monthly cap",
                f"{org.name} has spent {money.month_to_date} {money.currency} in {period}, {share * 100:.0f} % of "
                f"its monthly cap of {cap} {money.currency}. Leases that would pass the cap are "
                f"refused.\n\nSpending: {settings.SITE_URL.rstrip('/')}/balance/\n",
            )
    return sent


def _low_subject(money: Standing) -> str:
    return "Your Suanli balance is running out" if money.available > 0 else "Your Suanli balance has run out"


def _low_body(org: Organization, money: Standing, notice_seconds: int) -> str:
    minutes = notice_seconds // 60
    when = money.runs_out_at.strftime("%Y-%m-%d %H:%M UTC") if money.runs_out_at else "now"
    return (
        f"{org.name} has {money.available} {money.currency} available and spends {money.burn_per_hour} "
        f"{money.currency} an hour: it runs out at {when}.\n\n"
        f"Its card-hour leases will be ended when it is out and this notice is {minutes} minutes old. Top up to keep "
        f"them running: {settings.SITE_URL.rstrip('/')}/balance/\n" + _volumes_warning(org)
    )


def _volumes_warning(org: Organization) -> str:
    """What a stop would do to the organisation's volumes, when it has any."""
    if (
        not Volume.objects.for_org(org)
        .filter(state__in=[VolumeState.CREATING, VolumeState.READY, VolumeState.IN_USE])
        .exists()
    ):
        return ""
    return (
        f"\nIts volumes are then kept for {settings.SUANLI_VOLUME_GRACE_DAYS} days and wiped unless it tops up "
        f"before.\n"
    )
