"""Staff commands: `close-period`, `reconcile` (the staff page's checks, through the API) and `approve`."""

from __future__ import annotations

import sys

import click

from cli import output
from cli.app import cli, say, show, state
from cli.client import EXIT_API
from cli.i18n import _


@cli.command("close-period", help=_("Finalise a month's invoices and provider statements (staff; idempotent)."))
@click.argument("period", metavar="YYYY-MM")
def close_period(period: str) -> None:
    result = state().client().post("admin/close-period/", {"period": period})
    show(
        result,
        lambda d: say(
            _("{period} is closed: {invoices} new invoices, {statements} new provider statements.").format(**d)
        ),
    )


@cli.command("reconcile", help=_("Reconcile a closed month (staff): totals and every mismatch; exit 1 on any."))
@click.argument("period", metavar="YYYY-MM")
def reconcile(period: str) -> None:
    report = state().client().get("admin/reconciliation/", params={"period": period})

    def render(d: dict) -> None:
        for currency, totals in sorted((d.get("totals") or {}).items()):
            output.fields(totals, [(name, name) for name in totals], title=f"{d['period']} {currency}")
        if d.get("mismatches"):
            keys = list(d["mismatches"][0].keys())
            output.table(d["mismatches"], [(k, k) for k in keys], title=_("Mismatches"))
        say(
            _("{period}: everything matches.").format(period=d["period"])
            if d.get("ok")
            else _("{period}: {count} mismatches.").format(period=d["period"], count=len(d.get("mismatches") or []))
        )

    show(report, render)
    if not report.get("ok"):
        sys.exit(EXIT_API)


@cli.command("approve", help=_("Approve a pending provider organisation (staff)."))
@click.argument("org_id", type=int)
def approve(org_id: int) -> None:
    org = state().client().post(f"orgs/{org_id}/approve/")
    show(org, lambda d: say(_("{name} ({id}) is {status}.").format(name=d["name"], id=d["id"], status=d["status"])))
