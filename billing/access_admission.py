"""Admission of a data-access session (issue 16, workloads.data_access): the funds check billing registers with
workloads, run inside `data_access_open`.

The mode exists for an organisation whose money ran out: a session whose volumes are all in their grace period is
admitted whatever the balance (it is billed all the same, and its maximum duration bounds what it can cost). Any
other session is admitted like a lease or a volume (billing.funds): its first SUANLI_ADMISSION_MINIMUM_SECONDS (at
most its maximum duration) at its price per hour must fit in what is available on top of that much of what already
runs, and under the monthly cap; else 402 insufficient_funds.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings

from accounts.tenancy import platform_work
from billing import rating
from billing.balances import standing
from billing.funds import _afford, _reserved, _to_check
from billing.metering import ACCESS_PLAN
from workloads.models import DataAccess, Volume, VolumeState

_PLATFORM = "admission of a data-access session reads the organisation asking"


@platform_work(_PLATFORM)
def admit_data_access(session: DataAccess, volumes: list[Volume], now: datetime) -> None:
    """Raise InsufficientFunds unless the session may open (see the module)."""
    if volumes and all(volume.state == VolumeState.GRACE for volume in volumes):
        return
    checked = _to_check(session.organization_id)
    if checked is None:
        return
    org, cap = checked
    minimum = min(timedelta(seconds=settings.SUANLI_ADMISSION_MINIMUM_SECONDS), session.ends_at - now)
    need = rating.estimate(
        plan=ACCESS_PLAN, unit_price=session.price_per_hour, units=Decimal(1), start=now, end=now + minimum
    ).amount
    money = standing(org, now=now)
    own = money.burn_per_access.get(session.pk, Decimal(0))
    _afford(money, need, cap, reserved=_reserved(org, []), what="data access session", own_burn=own)
