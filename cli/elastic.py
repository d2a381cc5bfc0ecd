"""Elastic leases: `suanli leases scaling show/set/remove` (a card-hour lease's scaling rule and its state) and
`suanli leases queue-depth` (the depth of the customer's own job queue, for a queue-driven rule)."""

from __future__ import annotations

import click

from cli import output
from cli.app import say, show, state
from cli.client import new_idempotency_key
from cli.customer import leases
from cli.i18n import _


def _rule_fields(rule: dict) -> None:
    output.fields(
        rule,
        [
            (_("status"), "status"),
            (_("message"), "status_message"),
            (_("cards wanted"), "desired_gpus"),
            (_("fewest cards"), "min_gpus"),
            (_("most cards"), "max_gpus"),
            (_("target utilisation %"), "target_utilization_pct"),
            (_("queue depth per card"), "queue_depth_per_gpu"),
            (_("queue depth"), "queue_depth"),
            (_("reported"), "queue_depth_at"),
            (_("step up"), "step_up"),
            (_("step down"), "step_down"),
            (_("cool-down (s)"), "cooldown_seconds"),
            (_("schedule"), lambda r: [f"{e['cron']} => {e['max_gpus']}" for e in r.get("schedule") or []]),
            (_("price ceiling per hour"), output.money("max_price_per_hour")),
            (_("last scaled"), "last_scaled_at"),
            (_("evaluated"), "evaluated_at"),
        ],
    )


def _schedule_entry(text: str) -> dict:
    """'CRON=MAX', e.g. '* 0-8 * * *=0': at most MAX cards in every minute the cron expression names."""
    cron, sep, cap = text.rpartition("=")
    if not sep or not cron.strip() or not cap.strip().isdigit():
        raise click.BadParameter(_("expected CRON=MAX, e.g. '* 0-8 * * *=0'"), param_hint="--schedule")
    return {"cron": cron.strip(), "max_gpus": int(cap)}


@leases.group("scaling", help=_("An elastic lease's scaling rule: show, set or remove it."))
def scaling() -> None:
    pass


@scaling.command("show", help=_("The lease's scaling rule and what it is doing now."))
@click.argument("lease_id", type=int)
def scaling_show(lease_id: int) -> None:
    show(state().client().get(f"leases/{lease_id}/scaling/"), _rule_fields)


@scaling.command(
    "set",
    help=_(
        "Give a card-hour lease a scaling rule, or replace its rule (options left out take their defaults). "
        "Follow either the cards' utilisation (--utilization) or your job queue (--queue-per-card)."
    ),
)
@click.argument("lease_id", type=int)
@click.option("--min", "min_gpus", type=click.IntRange(0), default=0, show_default=True, help=_("Fewest cards."))
@click.option("--max", "max_gpus", type=click.IntRange(1), required=True, help=_("Most cards."))
@click.option(
    "--utilization", "target_utilization_pct", type=click.IntRange(1, 100), help=_("Target GPU utilisation, in %.")
)
@click.option(
    "--queue-per-card",
    "queue_depth_per_gpu",
    type=click.IntRange(1),
    help=_("Queued jobs per card (report the depth with `leases queue-depth`)."),
)
@click.option("--step-up", type=click.IntRange(1), default=1, show_default=True, help=_("Cards added at a time."))
@click.option("--step-down", type=click.IntRange(1), default=1, show_default=True, help=_("Cards removed at a time."))
@click.option(
    "--cooldown",
    "cooldown_seconds",
    type=click.IntRange(0),
    default=300,
    show_default=True,
    help=_("Seconds between two changes."),
)
@click.option(
    "--schedule",
    "schedule",
    multiple=True,
    help=_("CRON=MAX (UTC, repeatable): at most MAX cards in the minutes the cron expression names."),
)
@click.option("--max-price", "max_price_per_hour", help=_("Most the cards may cost an hour, in the lease's currency."))
def scaling_set(lease_id: int, schedule: tuple[str, ...], **rule) -> None:
    if (rule["target_utilization_pct"] is None) == (rule["queue_depth_per_gpu"] is None):
        raise click.UsageError(_("give exactly one of --utilization and --queue-per-card"))
    body = {name: value for name, value in rule.items() if value is not None}
    body["schedule"] = [_schedule_entry(entry) for entry in schedule]
    headers = {"Idempotency-Key": new_idempotency_key()}
    show(state().client().put(f"leases/{lease_id}/scaling/", body, headers=headers), _rule_fields)


@scaling.command("remove", help=_("Remove the lease's scaling rule (it keeps the cards it holds)."))
@click.argument("lease_id", type=int)
def scaling_remove(lease_id: int) -> None:
    state().client().delete(f"leases/{lease_id}/scaling/")
    show({"lease": lease_id, "scaling": None}, lambda d: say(_("Lease {id}: no scaling rule.").format(id=lease_id)))


@leases.command("queue-depth", help=_("Report your job queue's depth to a lease's queue-driven scaling rule."))
@click.argument("lease_id", type=int)
@click.argument("depth", type=click.IntRange(0))
def queue_depth(lease_id: int, depth: int) -> None:
    headers = {"Idempotency-Key": new_idempotency_key()}
    show(state().client().post(f"leases/{lease_id}/queue-depth/", {"depth": depth}, headers=headers), _rule_fields)
