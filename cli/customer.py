"""Customers' commands: `offers search/show`, `templates`, `keys`, `volumes ...`, `leases ...`, `ssh`, `events`,
`logs`, `usage`, `balance`, `top-up` and `invoices ...`."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
import time
from pathlib import Path

import click
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from cli import output
from cli.app import cli, say, show, state
from cli.client import EXIT_API, ApiError, new_idempotency_key
from cli.i18n import _
from cli.query import ORDERINGS, Filters, parse, resolve_gpu

PLANS = ["card_hour", "server_month", "pflops_year"]


def _price(offer: dict, plan: str, interruptible: bool) -> str | None:
    """The offer's price for `plan`, in the currency asked for where the API converted it."""
    kind = "interruptible_prices" if interruptible else "prices"
    local = offer.get("local_prices")
    if local and (local.get(kind) or {}).get(plan) is not None:
        return f"{local[kind][plan]} {local['currency']}"
    price = (offer.get(kind) or {}).get(plan)
    return None if price is None else f"{price} {offer.get('currency')}"


# --- offers -------------------------------------------------------------------------------------------------------


@cli.group(help=_("Search offers; providers also create, change and delist theirs."))
def offers() -> None:
    pass


QUERY_HELP = _(
    "Search offers with a query: gpu=H100_SXM cards>=8 region=cn-east-1 price<2.5 reliability>0.99 "
    "interconnect=nvlink plan=card_hour interruptible currency=CNY sort=-reliability limit=5. "
    "Fields: gpu (name words or id), cards (>=, >), region, plan, price (<=, <), interconnect, reliability (>=, >), "
    "interruptible, currency, sort, limit."
)


@offers.command("search", help=QUERY_HELP)
@click.argument("query", nargs=-1)
@click.option("--sort", type=click.Choice(ORDERINGS), help=_("Order of the results (default: price)."))
@click.option("--limit", type=click.IntRange(1, 500), help=_("At most this many offers."))
def offers_search(query: tuple[str, ...], sort: str | None, limit: int | None) -> None:
    text = " ".join(query)
    filters = parse(text).merged(Filters(ordering=sort, limit=limit))
    client = state().client(auth=False)
    gpu_model = resolve_gpu(filters, client.get("gpu-models/", auth=False), text) if filters.gpu else None
    params = filters.params(gpu_model)
    results = list(client.pages("offers/", params, limit=filters.limit or 50))
    plan = filters.plan or "card_hour"
    columns = [
        ("id", "id"),
        (_("provider"), "provider"),
        (_("GPU"), "gpu_model_name"),
        (_("free"), lambda o: f"{o.get('gpus_free')}/{o.get('gpus_total')}"),
        (_("region"), "region"),
        (_("interconnect"), "interconnect"),
        (_("price ({plan})").format(plan=plan), lambda o: _price(o, plan, bool(filters.interruptible))),
        (_("reliability"), "reliability"),
    ]
    show(results, lambda d: output.table(d, columns, empty=_("No offer matches.")))


@offers.command("show", help=_("One offer."))
@click.argument("offer_id", type=int)
def offers_show(offer_id: int) -> None:
    offer = state().client(auth=False).get(f"offers/{offer_id}/")
    show(
        offer,
        lambda o: output.fields(
            o,
            [
                ("id", "id"),
                (_("provider"), "provider"),
                (_("GPU"), "gpu_model_name"),
                (_("cards"), "gpus_total"),
                (_("free now"), "gpus_free"),
                (_("region"), "region"),
                (_("interconnect"), "interconnect"),
                (_("currency"), "currency"),
                (_("prices"), lambda o: _prices_text(o.get("prices"))),
                (_("interruptible"), lambda o: _prices_text(o.get("interruptible_prices"))),
                (_("minimum cards"), "min_gpus"),
                (_("available until"), "available_until"),
                (_("reliability"), "reliability"),
                (_("delisted"), "delisted_at"),
            ],
        ),
    )


def _prices_text(prices: dict | None) -> str:
    return ", ".join(f"{k}={v}" for k, v in (prices or {}).items() if v is not None) or "-"


@cli.command("gpu-models", help=_("The GPU catalogue."))
def gpu_models() -> None:
    models = state().client(auth=False).get("gpu-models/", auth=False)
    show(
        models,
        lambda d: output.table(
            d, [("id", "id"), (_("name"), "name"), (_("memory GB"), "memory_gb"), (_("FP16 TFLOPS"), "fp16_tflops")]
        ),
    )


@cli.command("templates", help=_("Launch templates: the public ones and your organisation's."))
def templates() -> None:
    st = state()
    client = st.client(auth=False)
    items = client.get("templates/", auth=bool(client.token))
    show(
        items,
        lambda d: output.table(d, [("id", "id"), (_("name"), "name"), (_("image"), "image"), (_("ports"), "ports")]),
    )


# --- SSH keys -----------------------------------------------------------------------------------------------------


@cli.group(help=_("Your SSH public keys (put into the workloads you start)."))
def keys() -> None:
    pass


KEY_COLUMNS = [("id", "id"), (_("name"), "name"), (_("fingerprint"), "fingerprint"), (_("added"), "created_at")]


@keys.command("list", help=_("Your SSH keys."))
def keys_list() -> None:
    show(state().client().get("ssh-keys/"), lambda d: output.table(d, KEY_COLUMNS, empty=_("No SSH keys.")))


@keys.command("add", help=_("Add a public key from a file (e.g. ~/.ssh/id_ed25519.pub)."))
@click.argument("path", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help=_("Its name (default: the key's comment or the file name)."))
def keys_add(path: Path, name: str | None) -> None:
    public = path.read_text(encoding="utf-8").strip()
    parts = public.split()
    name = name or (parts[2] if len(parts) > 2 else path.name)
    key = state().client().post("ssh-keys/", {"name": name[:100], "public_key": public})
    show(key, lambda k: output.fields(k, KEY_COLUMNS))


@keys.command("delete", help=_("Delete one of your SSH keys."))
@click.argument("key_id", type=int)
def keys_delete(key_id: int) -> None:
    state().client().delete(f"ssh-keys/{key_id}/")
    show({"deleted": key_id}, lambda d: say(_("Deleted SSH key {id}.").format(id=key_id)))


# --- volumes ------------------------------------------------------------------------------------------------------


@cli.group(help=_("Volumes: storage on one server that outlives a lease (mount with `leases create --volume`)."))
def volumes() -> None:
    pass


VOLUME_COLUMNS = [
    ("id", "id"),
    (_("name"), "name"),
    (_("server"), "server"),
    (_("size GB"), "size_gb"),
    (_("used GB"), "used_gb"),
    (_("state"), "state"),
    (_("per GB-month"), output.money("price_per_gb_month")),
    (_("wiped by"), "wipe_at"),
]


@volumes.command("list", help=_("Your organisation's volumes."))
def volumes_list() -> None:
    items = list(state().client().pages("volumes/"))
    show(items, lambda d: output.table(d, VOLUME_COLUMNS, empty=_("No volumes.")))


@volumes.command("create", help=_("Make a volume on a server that lends storage (its offer prices it)."))
@click.argument("name")
@click.option("--server", type=int, required=True, help=_("The server to keep it on."))
@click.option("--size-gb", type=int, required=True, help=_("Its size in GB."))
def volumes_create(name: str, server: int, size_gb: int) -> None:
    volume = state().client().post("volumes/", {"name": name, "server": server, "size_gb": size_gb})
    show(volume, lambda v: output.fields(v, VOLUME_COLUMNS))


@volumes.command("show", help=_("One volume."))
@click.argument("volume_id", type=int)
def volumes_show(volume_id: int) -> None:
    show(state().client().get(f"volumes/{volume_id}/"), lambda v: output.fields(v, VOLUME_COLUMNS))


@volumes.command("delete", help=_("Wipe a volume and its data (refused while a lease mounts it)."))
@click.argument("volume_id", type=int)
def volumes_delete(volume_id: int) -> None:
    show(state().client().delete(f"volumes/{volume_id}/"), lambda v: output.fields(v, VOLUME_COLUMNS))


# --- leases -------------------------------------------------------------------------------------------------------


@cli.group(help=_("Rent capacity and manage your leases."))
def leases() -> None:
    pass


LEASE_COLUMNS = [
    ("id", "id"),
    (_("state"), "state"),
    (_("plan"), "plan"),
    (_("cards"), lambda lease: len(lease.get("gpus") or []) or lease.get("gpu_count")),
    (_("region"), "region"),
    (_("price"), output.money("unit_price")),
    (_("start"), "start_at"),
    (_("end"), "end_at"),
    (_("workload"), lambda lease: ", ".join(w["state"] for w in lease.get("workloads") or []) or None),
]


def _lease_fields(lease: dict) -> None:
    output.fields(
        lease,
        [
            ("id", "id"),
            (_("state"), "state"),
            (_("plan"), "plan"),
            (_("interruptible"), "interruptible"),
            (_("offer"), "offer"),
            (_("region"), "region"),
            (_("cards"), lambda x: len(x.get("gpus") or [])),
            (_("price"), output.money("unit_price")),
            (_("start"), "start_at"),
            (_("end"), "end_at"),
            (_("ended"), "ended_at"),
            (_("reason"), "end_reason"),
            (_("delivered PFLOPS"), "delivered_pflops"),
        ],
    )
    workloads = lease.get("workloads") or []
    if workloads:
        output.table(
            workloads,
            [
                ("id", "id"),
                (_("server"), "server"),
                (_("state"), "state"),
                (_("message"), "message"),
                (
                    _("connect"),
                    lambda w: "; ".join(
                        c.get("command") or c.get("url") or f"{c['host']}:{c['port']}" for c in w.get("connect") or []
                    ),
                ),
            ],
            title=_("Workloads"),
        )


def _named_id(value: str, items: list[dict], what: str) -> int:
    if value.isdigit():
        return int(value)
    for item in items:
        if item.get("name", "").lower() == value.lower():
            return item["id"]
    raise ApiError(404, "not_found", _("no {what} named {name!r}").format(what=what, name=value))


@leases.command("create", help=_("Rent: any plan, now or as a reservation, with a workload to run."))
@click.option("--plan", type=click.Choice(PLANS), default="card_hour", show_default=True, help=_("Pricing plan."))
@click.option("--offer", type=int, help=_("Offer id (from `offers search`)."))
@click.option("--gpu", metavar="NAME|ID", help=_("GPU model, when no offer is named."))
@click.option("--region", help=_("Region, when no offer is named."))
@click.option("--server", type=int, help=_("A server of the offer (card-hour)."))
@click.option("--cards", "gpu_count", type=int, help=_("Cards (card_hour)."))
@click.option("--servers", type=int, help=_("Whole servers (server_month, default 1)."))
@click.option("--pflops", help=_("PFLOPS (pflops_year), a decimal."))
@click.option("--start-at", metavar="ISO", help=_("Start later (a reservation), ISO 8601 with offset."))
@click.option("--end-at", metavar="ISO", help=_("End, ISO 8601 (needed for server_month and pflops_year)."))
@click.option("--interruptible", is_flag=True, help=_("At the interruptible price; may be preempted."))
@click.option("--template", metavar="ID|NAME", help=_("Run this launch template."))
@click.option("--image", metavar="REF", help=_("Run this container image."))
@click.option("--command", "command_line", metavar="CMD", help=_("The workload's command (split like a shell)."))
@click.option("--env", "env", multiple=True, metavar="KEY=VALUE", help=_("Environment variable (repeatable)."))
@click.option("--port", "ports", multiple=True, type=int, help=_("Port to publish (repeatable)."))
@click.option("--key", "key_refs", multiple=True, metavar="ID|NAME", help=_("SSH key to put in (repeatable)."))
@click.option("--disk-gb", type=int, help=_("Scratch disk in GB."))
@click.option("--host-access", is_flag=True, help=_("The whole host instead of a container (where offered)."))
@click.option("--volume", "volumes", multiple=True, metavar="ID:PATH", help=_("Mount a volume (repeatable)."))
@click.option(
    "--idempotency-key", metavar="KEY", help=_("Reuse a key to retry safely (default: a new one, printed on stderr).")
)
@click.option("--wait/--no-wait", default=False, help=_("Wait until the workload runs (or the lease is active)."))
@click.option("--timeout", type=int, default=900, show_default=True, help=_("Seconds --wait waits at most."))
def leases_create(**opts) -> None:
    st = state()
    client = st.client()
    body: dict = {"plan": opts["plan"], "interruptible": opts["interruptible"]}
    for name in ("offer", "region", "server", "gpu_count", "servers", "pflops", "start_at", "end_at"):
        if opts[name] is not None:
            body[name] = opts[name]
    if opts["gpu"]:
        body["gpu_model"] = _named_id(opts["gpu"], client.get("gpu-models/", auth=False), "GPU model")
    workload = _workload(client, opts)
    if workload:
        body["workload"] = workload
    key = opts["idempotency_key"] or new_idempotency_key()
    if not st.json:
        say(_("Idempotency-Key: {key} (pass --idempotency-key {key} to retry this exact request)").format(key=key))
    lease = client.post("leases/", body, headers={"Idempotency-Key": key})
    if opts["wait"]:
        lease = _wait(client, lease["id"], opts["timeout"], quiet=st.json)
    show(lease, _lease_fields)
    if opts["wait"] and not _ready(lease)[0]:
        sys.exit(EXIT_API)


def _workload(client, opts: dict) -> dict | None:
    workload: dict = {}
    if opts["template"]:
        workload["template"] = _named_id(opts["template"], client.get("templates/"), "template")
    if opts["image"]:
        workload["image"] = opts["image"]
    if opts["command_line"]:
        workload["command"] = shlex.split(opts["command_line"])
    if opts["env"]:
        pairs = [item.partition("=") for item in opts["env"]]
        bad = [k for k, sep, _v in pairs if not sep or not k]
        if bad:
            raise click.BadParameter(_("write KEY=VALUE"), param_hint="--env")
        workload["env"] = {k: v for k, _sep, v in pairs}
    if opts["ports"]:
        workload["ports"] = list(opts["ports"])
    if opts["key_refs"]:
        mine = client.get("ssh-keys/")
        workload["ssh_keys"] = [_named_id(ref, mine, "SSH key") for ref in opts["key_refs"]]
    if opts["disk_gb"]:
        workload["disk_gb"] = opts["disk_gb"]
    if opts["host_access"]:
        workload["access"] = "host"
    if opts["volumes"]:
        mounts = []
        for item in opts["volumes"]:
            volume, sep, path = item.partition(":")
            if not sep or not volume.isdigit() or not path:
                raise click.BadParameter(_("write VOLUME_ID:/path"), param_hint="--volume")
            mounts.append({"volume": int(volume), "path": path})
        workload["volumes"] = mounts
    return workload or None


FINAL_WORKLOAD = {"failed", "exited", "cleaned"}
FINAL_LEASE = {"ended", "preempted", "cancelled", "failed"}


def _ready(lease: dict) -> tuple[bool, bool, str]:
    """(ready, finished, what to show): ready when every workload runs, or, with none, when the lease is active."""
    workloads = lease.get("workloads") or []
    if lease.get("state") in FINAL_LEASE:
        return False, True, lease["state"]
    if workloads:
        states = [w["state"] for w in workloads]
        text = ", ".join(f"{w['state']}" + (f" ({w['progress']}%)" if w.get("progress") else "") for w in workloads)
        if any(s in FINAL_WORKLOAD for s in states):
            return False, True, text
        return all(s == "running" for s in states), False, text
    return lease.get("state") == "active", False, lease.get("state", "")


def _wait(client, lease_id: int, timeout: int, *, quiet: bool) -> dict:
    deadline = time.monotonic() + timeout
    columns = [SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn()]
    with Progress(*columns, console=output.err, transient=True, disable=quiet) as progress:
        task = progress.add_task(_("lease {id}: waiting").format(id=lease_id))
        while True:
            lease = client.get(f"leases/{lease_id}/")
            ready, finished, text = _ready(lease)
            progress.update(task, description=_("lease {id}: {state}").format(id=lease_id, state=text))
            if ready or finished:
                break
            if time.monotonic() >= deadline:
                if not quiet:
                    say(_("Gave up waiting after {seconds} s.").format(seconds=timeout))
                break
            time.sleep(1.0)
    if not quiet:
        say(_("Lease {id}: {state}").format(id=lease_id, state=_ready(lease)[2]))
    return lease


@leases.command("list", help=_("Your organisation's leases, newest first."))
@click.option("--state", "lease_state", help=_("Only leases in this state."))
@click.option("--limit", type=click.IntRange(1), default=100, show_default=True, help=_("At most this many."))
def leases_list(lease_state: str | None, limit: int) -> None:
    params = {"state": lease_state} if lease_state else {}
    items = list(state().client().pages("leases/", params, limit=limit))
    show(items, lambda d: output.table(d, LEASE_COLUMNS, empty=_("No leases.")))


@leases.command("show", help=_("One lease, with its workloads and how to connect."))
@click.argument("lease_id", type=int)
def leases_show(lease_id: int) -> None:
    show(state().client().get(f"leases/{lease_id}/"), _lease_fields)


@leases.command("resize", help=_("Change a card-hour lease's card count."))
@click.argument("lease_id", type=int)
@click.argument("cards", type=click.IntRange(1))
def leases_resize(lease_id: int, cards: int) -> None:
    lease = (
        state()
        .client()
        .post(f"leases/{lease_id}/resize/", {"gpu_count": cards}, headers={"Idempotency-Key": new_idempotency_key()})
    )
    show(lease, _lease_fields)


def _lease_verb(verb: str, text: str):
    @leases.command(verb, help=text)
    @click.argument("lease_id", type=int)
    def command(lease_id: int) -> None:
        lease = state().client().post(f"leases/{lease_id}/{verb}/", headers={"Idempotency-Key": new_idempotency_key()})
        show(lease, _lease_fields)

    return command


_lease_verb("end", _("End a lease now (billing stops; the cards are released)."))
_lease_verb("stop", _("Stop a lease: release its cards and keep its volumes."))
_lease_verb("start", _("Start a stopped lease again on the same server."))


@cli.command(
    "ssh",
    help=_("Open the SSH line of a lease's workload (extra arguments go to ssh)."),
    context_settings={"ignore_unknown_options": True},
)
@click.argument("lease_id", type=int)
@click.option("--workload", "workload_id", type=int, help=_("Which workload, for a lease on several servers."))
@click.option("--print", "print_only", is_flag=True, help=_("Print the ssh command instead of running it."))
@click.argument("ssh_args", nargs=-1, type=click.UNPROCESSED)
def ssh(lease_id: int, workload_id: int | None, print_only: bool, ssh_args: tuple[str, ...]) -> None:
    lease = state().client().get(f"leases/{lease_id}/")
    lines = [
        (w, c)
        for w in lease.get("workloads") or []
        for c in w.get("connect") or []
        if c.get("kind") == "ssh" and (workload_id is None or w["id"] == workload_id)
    ]
    if not lines:
        states = ", ".join(w["state"] for w in lease.get("workloads") or []) or lease.get("state")
        raise ApiError(409, "no_ssh", _("lease {id} has no SSH line yet ({state})").format(id=lease_id, state=states))
    line = lines[0][1]
    argv = ["ssh", "-p", str(line["port"])]
    argv += [*ssh_args, f"{line.get('user') or 'root'}@{line['host']}"]
    if print_only or state().json:
        show({"argv": argv, "connect": line}, lambda d: output.out.print(shlex.join(argv), markup=False))
        return
    program = shutil.which("ssh")
    if program is None:
        raise ApiError(None, "no_ssh_client", _("no ssh program on PATH; run: {cmd}").format(cmd=shlex.join(argv)))
    sys.stdout.flush()
    os.execv(program, argv)  # noqa: S606 (ssh takes over the terminal, as `ssh` typed by hand would)


@cli.command("events", help=_("A lease's event log (allocation, workload states, resizes, the end)."))
@click.argument("lease_id", type=int)
@click.option("--follow", "-f", is_flag=True, help=_("Keep printing new events until the lease is over."))
@click.option("--interval", type=float, default=2.0, show_default=True, help=_("Seconds between polls with -f."))
def events(lease_id: int, follow: bool, interval: float) -> None:
    client = state().client()
    seen: set[int] = set()
    columns = [(_("at"), "at"), (_("event"), "kind"), (_("details"), lambda e: _details(e.get("data")))]
    while True:
        items = list(client.pages(f"leases/{lease_id}/events/", {"page_size": 500}))
        fresh = [e for e in items if e["id"] not in seen]
        fresh.sort(key=lambda e: (e["at"], e["id"]))
        seen.update(e["id"] for e in fresh)
        if state().json:
            for event in fresh if follow else []:
                output.json_out(event)
            if not follow:
                output.json_out(fresh)
        elif fresh or not follow:
            output.table(fresh, columns, empty=_("No events."))
        if not follow or client.get(f"leases/{lease_id}/")["state"] in FINAL_LEASE:
            return
        time.sleep(interval)


LOG_MAX_LINES = 10_000  # the API's most lines of a workload's output


@cli.command("logs", help=_("A workload's output: the last lines its server's agent sent (every 30 s or so)."))
@click.argument("lease_id", type=int)
@click.option("--workload", "workload_id", type=int, help=_("Which workload of the lease (by default its first)."))
@click.option(
    "--tail",
    type=click.IntRange(1, LOG_MAX_LINES),
    default=200,
    show_default=True,
    help=_("How many of the last lines."),
)
@click.option("--follow", "-f", is_flag=True, help=_("Keep printing new output until the lease is over."))
@click.option("--interval", type=float, default=5.0, show_default=True, help=_("Seconds between polls with -f."))
def logs(lease_id: int, workload_id: int | None, tail: int, follow: bool, interval: float) -> None:
    client = state().client()
    if workload_id is None:
        workloads = client.get(f"leases/{lease_id}/").get("workloads") or []
        if not workloads:
            raise ApiError(None, "no_workload", _("lease {id} has no workload").format(id=lease_id))
        workload_id = workloads[0]["id"]
    path = f"leases/{lease_id}/workloads/{workload_id}/logs/"
    data = client.get(path, params={"tail": tail})
    if state().json and not follow:
        output.json_out(data)
        return
    _print_output(data, data["text"])
    shown, at = data["text"], data["captured_at"]
    while follow:
        if client.get(f"leases/{lease_id}/")["state"] in FINAL_LEASE:
            return
        time.sleep(interval)
        data = client.get(path, params={"tail": LOG_MAX_LINES})
        if data["captured_at"] == at:
            continue
        _print_output(data, _new_output(shown, data["text"]))
        shown, at = data["text"], data["captured_at"]


def _print_output(data: dict, text: str) -> None:
    if state().json:
        output.json_out({**data, "text": text})
    elif text:
        click.echo(text if text.endswith("\n") else text + "\n", nl=False)


def _new_output(before: str, now: str) -> str:
    """What `now` (a later tail of the same output) adds to `before`: the lines after the longest run of whole
    lines that ends `before` and starts `now`; all of `now` when there is none (the output started again, or more
    was printed than a tail holds)."""
    if not before:
        return now
    old, new = before.splitlines(keepends=True), now.splitlines(keepends=True)
    # The prefix function of new + [separator] + old: its last value is the overlap, in lines, in linear time.
    seq: list[str | None] = [*new, None, *old]
    border = [0] * len(seq)
    for i in range(1, len(seq)):
        k = border[i - 1]
        while k and seq[i] != seq[k]:
            k = border[k - 1]
        if seq[i] == seq[k]:
            k += 1
        border[i] = k
    return "".join(new[border[-1] :])


def _details(data) -> str | None:
    if not data:
        return None
    if isinstance(data, dict):
        return ", ".join(f"{k}={v}" for k, v in data.items())
    return str(data)


@cli.command("usage", help=_("What a lease has cost so far."))
@click.argument("lease_id", type=int)
def usage(lease_id: int) -> None:
    data = state().client().get(f"leases/{lease_id}/usage/")

    def render(d: dict) -> None:
        output.fields(
            d,
            [
                (_("cost so far"), output.money("amount")),
                (_("seconds"), "seconds"),
                (_("down seconds"), "down_seconds"),
                (_("metered until"), "metered_until"),
                (_("as of"), "as_of"),
            ],
        )
        if d.get("lines"):
            keys = list(d["lines"][0].keys())
            output.table(d["lines"], [(k, k) for k in keys])

    show(data, render)


@cli.command("balance", help=_("Balance, credit, this month's spending and burn rate."))
def balance() -> None:
    data = state().client().get("balance/")

    def render(d: dict) -> None:
        output.fields(
            d,
            [
                (_("mode"), "mode"),
                (_("balance"), output.money("balance")),
                (_("credit limit"), output.money("credit_limit")),
                (_("available"), output.money("available")),
                (_("unpaid"), output.money("unpaid")),
                (_("this month"), output.money("month_to_date")),
                (_("burn per hour"), output.money("burn_per_hour")),
                (_("runs out at"), "runs_out_at"),
                (_("monthly cap"), output.money("monthly_cap")),
                (_("as of"), "as_of"),
            ],
        )
        if d.get("leases"):
            output.table(
                d["leases"],
                [
                    (_("lease"), "lease"),
                    (_("plan"), "plan"),
                    (_("state"), "state"),
                    (_("this month"), "month_to_date"),
                    (_("per hour"), "burn_per_hour"),
                ],
            )

    show(data, render)


@cli.command("top-up", help=_("Pay money in: starts a payment you finish on the site's balance page."))
@click.argument("amount")
@click.option("--currency", help=_("Currency (default: your organisation's)."))
def top_up(amount: str, currency: str | None) -> None:
    st = state()
    client = st.client()
    currency = currency or client.get("balance/")["currency"]
    started = client.post(
        "balance/top-ups/", {"amount": amount, "currency": currency}, headers={"Idempotency-Key": new_idempotency_key()}
    )

    def render(d: dict) -> None:
        say(
            _("Top-up {id} of {amount} {currency} started; pay it at {url}").format(
                id=d["top_up"], amount=d["amount"], currency=d["currency"], url=f"{st.settings.api_url}/balance/"
            )
        )

    show(started, render)


# --- invoices -----------------------------------------------------------------------------------------------------


@cli.group(help=_("Your organisation's invoices."))
def invoices() -> None:
    pass


@invoices.command("list", help=_("Invoices, newest month first."))
@click.option("--state", "invoice_state", help=_("Only invoices in this state (open, paid, void)."))
def invoices_list(invoice_state: str | None) -> None:
    items = list(state().client().pages("invoices/", {"state": invoice_state} if invoice_state else {}))
    show(
        items,
        lambda d: output.table(
            d,
            [
                ("id", "id"),
                (_("number"), "number"),
                (_("period"), "period"),
                (_("state"), "state"),
                (_("total"), output.money("total")),
                (_("due"), "due_at"),
                (_("paid"), "paid_at"),
            ],
            empty=_("No invoices."),
        ),
    )


@invoices.command("show", help=_("One invoice with its lines."))
@click.argument("invoice_id", type=int)
def invoices_show(invoice_id: int) -> None:
    data = state().client().get(f"invoices/{invoice_id}/")

    def render(d: dict) -> None:
        output.fields(
            d,
            [
                (_("number"), "number"),
                (_("period"), "period"),
                (_("state"), "state"),
                (_("subtotal"), output.money("subtotal")),
                (_("credits"), output.money("credits")),
                (_("tax"), output.money("tax")),
                (_("total"), output.money("total")),
                (_("due"), "due_at"),
                (_("paid"), "paid_at"),
            ],
        )
        output.table(
            d.get("lines") or [],
            [
                (_("lease"), "lease"),
                (_("plan"), "plan"),
                (_("quantity"), "quantity"),
                (_("unit"), "unit"),
                (_("unit price"), "unit_price"),
                (_("amount"), "amount"),
            ],
        )

    show(data, render)


@invoices.command("pay", help=_("Start paying an open invoice by card, Alipay or WeChat Pay (finish on the site)."))
@click.argument("invoice_id", type=int)
def invoices_pay(invoice_id: int) -> None:
    st = state()
    started = st.client().post(f"invoices/{invoice_id}/pay/", headers={"Idempotency-Key": new_idempotency_key()})
    show(
        started,
        lambda d: say(
            _("Payment {id} of {amount} {currency} started; pay it at {url}").format(
                id=d["payment"],
                amount=d["amount"],
                currency=d["currency"],
                url=f"{st.settings.api_url}/invoices/{invoice_id}/",
            )
        ),
    )


@invoices.command("pdf", help=_("Download an invoice as PDF (to NUMBER.pdf, or -o FILE, or - for stdout)."))
@click.argument("invoice_id", type=int)
@click.option("-o", "--output", "target", metavar="FILE", help=_("Where to write it."))
def invoices_pdf(invoice_id: int, target: str | None) -> None:
    client = state().client()
    response = client.get(
        f"invoices/{invoice_id}/pdf/", raw=True, headers={"Accept": "application/pdf, application/json;q=0.9"}
    )
    name = target or _filename(response.headers.get("Content-Disposition")) or f"invoice-{invoice_id}.pdf"
    total = int(response.headers.get("Content-Length") or 0) or None
    sink = sys.stdout.buffer if name == "-" else open(name, "wb")  # noqa: SIM115 (closed below)
    written = 0
    try:
        with Progress(console=output.err, transient=True, disable=name == "-" or state().json) as progress:
            task = progress.add_task(_("downloading"), total=total)
            for chunk in response.iter_content(64 * 1024):
                sink.write(chunk)
                written += len(chunk)
                progress.update(task, advance=len(chunk))
    finally:
        if sink is not sys.stdout.buffer:
            sink.close()
    if name != "-":
        show(
            {"invoice": invoice_id, "file": name, "bytes": written},
            lambda d: say(_("Saved {file} ({bytes} bytes).").format(**d)),
        )


def _filename(disposition: str | None) -> str | None:
    if not disposition or "filename=" not in disposition:
        return None
    name = disposition.split("filename=", 1)[1].strip().strip('"')
    return os.path.basename(name) or None
