"""Check (a), data-access side (issue 16): every data-access record of the month is on the data-access line of its
organisation, currency, session and price per hour (`access_not_invoiced`), none was written after its invoice was
issued (`access_after_close`), and each such line's amount is to_money of its records (`access_line_amount`,
`access_line_without_records`). Each record is also checked against itself and its session: its amount and hours
are its seconds rated per hour, its price and currency the session's, its time inside the session's running time
(from its container's first `running` report to its end or `ends_at`) (`access_record`)."""

from __future__ import annotations

from collections.abc import Callable

from django.db.models import QuerySet

from billing.invoicing import Period
from billing.metering import ACCESS_PLAN
from billing.models import DataAccessRecord
from billing.reconciliation.records import RecordKind, check_record_kind
from billing.reconciliation.report import Reconciliation
from workloads.models import DataAccess


def month_access(period: Period) -> QuerySet[DataAccessRecord]:
    return DATA_ACCESS.month(period)


def check_data_access(result: Reconciliation, period: Period) -> None:
    """The month's data-access records against the data-access lines of its finalised invoices, and each against
    itself."""
    check_record_kind(result, period, DATA_ACCESS)


def _session_check(records: QuerySet[DataAccessRecord]) -> Callable[[DataAccessRecord], bool]:
    """A record against its session's price, currency, organisation and running time."""
    sessions = (
        DataAccess.objects.unscoped("reconciliation reads every tenant's data-access sessions")
        .select_related("workload")
        .in_bulk(set(records.values_list("data_access_id", flat=True).distinct()))
    )

    def fits(record: DataAccessRecord) -> bool:
        session = sessions[record.data_access_id]
        started = session.workload.started_at if hasattr(session, "workload") else None
        ends = min(session.ends_at, session.ended_at) if session.ended_at else session.ends_at
        return not (
            record.unit_price != session.price_per_hour
            or record.currency != session.currency
            or record.organization_id != session.organization_id
            or started is None
            or record.start < started
            or record.end > ends
        )

    return fits


DATA_ACCESS = RecordKind(
    model=DataAccessRecord,
    owner="data_access",
    code="access",
    noun="data-access",
    owner_noun="session",
    owner_objects=None,
    records_key="data_access_records",
    per_unit="an hour",
    line_records="records",
    record_rule="hour or their session's price and running time",
    plan=ACCESS_PLAN,
    units=lambda record: 1,
    owner_check=_session_check,
)
