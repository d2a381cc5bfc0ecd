"""Providers' commands: `servers register/list/show/drain/undrain/token`, `offers create/update/delist/mine`,
`earnings` and `payouts`."""

from __future__ import annotations

import shlex

import click

from cli import output
from cli.app import cli, say, show, state
from cli.customer import _named_id, _prices_text, offers
from cli.i18n import _

SERVER_COLUMNS = [
    ("id", "id"),
    (_("name"), "name"),
    (_("status"), "status"),
    (_("GPU"), "gpu_model_name"),
    (_("cards"), "gpu_count"),
    (_("region"), "region"),
    (_("drained"), "drained"),
    (_("last seen"), "last_seen_at"),
]


def install_command(url: str, token: str, agent: dict, *, force: bool = False) -> str:
    """agents/README.md's install steps as one line for the GPU host, the line the site's server page shows: the
    agent's wheel (pinned to its SHA-256, which pip checks) and its systemd unit come from the site (`agent`: what
    GET /agent/ answers)."""
    enroll = f"sudo suanli-agent enroll --url {shlex.quote(url)} --token {shlex.quote(token)}"
    if force:
        enroll += " --force"
    wheel = f"{url}/agent/{agent['filename']}#sha256={agent['sha256']}"
    steps = [
        "sudo python3 -m venv /opt/suanli-agent",
        f"sudo /opt/suanli-agent/bin/pip install {shlex.quote(wheel)}",
        "sudo ln -sf /opt/suanli-agent/bin/suanli-agent /usr/local/bin/suanli-agent",
        "(id -u suanli-agent >/dev/null 2>&1 || sudo useradd --system --no-create-home"
        " --shell /usr/sbin/nologin --groups video suanli-agent)",
        enroll,
        f"sudo curl -fsSL {shlex.quote(url + '/agent/suanli-agent.service')}"
        " -o /etc/systemd/system/suanli-agent.service",
        "sudo systemctl daemon-reload",
        "sudo systemctl enable --now suanli-agent",
    ]
    return " && ".join(steps)


@cli.group(help=_("Your servers (providers)."))
def servers() -> None:
    pass


def _server_with_token(server: dict, *, force: bool) -> None:
    """Print the server and the agent's install command (stdout: it is what the provider copies)."""

    def render(d: dict) -> None:
        output.fields(
            d,
            [
                ("id", "id"),
                (_("name"), "name"),
                (_("status"), "status"),
                (_("enrolment token expires"), "enrollment_expires_at"),
            ],
        )
        say(_("Run this on the GPU host:"))
        output.out.print(d["install_command"], markup=False, soft_wrap=True)

    st = state()
    agent = st.client().get(f"{st.settings.api_url}/agent/", auth=False)  # the wheel the site serves, and its hash
    line = install_command(st.settings.api_url, server["enrollment_token"], agent, force=force)
    show({**server, "install_command": line}, render)


@servers.command("register", help=_("Register a server; prints the agent's one-line install command."))
@click.option("--name", required=True, help=_("Its name."))
@click.option("--region", required=True, help=_("Region, e.g. cn-east-1."))
@click.option("--gpu", required=True, metavar="NAME|ID", help=_("GPU model (catalogue name or id)."))
@click.option("--cards", "gpu_count", type=int, required=True, help=_("Number of cards."))
@click.option("--cpu-cores", type=int, required=True, help=_("CPU cores."))
@click.option("--ram-gb", type=int, required=True, help=_("Memory in GB."))
@click.option("--disk-gb", type=int, required=True, help=_("Disk in GB."))
@click.option("--site", help=_("Data centre or site name."))
@click.option("--network-gbps", type=int, help=_("Network bandwidth in Gbit/s."))
@click.option("--interconnect", type=click.Choice(["nvlink", "pcie", "infinity_fabric", "hccs"]))
@click.option("--runtime", type=click.Choice(["docker", "host"]), help=_("How workloads run on it."))
@click.option("--public-host", help=_("The address customers connect to."))
@click.option("--ports", "port_range", metavar="START-END", help=_("Port range for customers' services."))
@click.option("--volume-disk-gb", type=int, help=_("Disk lent for volumes, in GB."))
def servers_register(**opts) -> None:
    client = state().client()
    body = {k: v for k, v in opts.items() if v is not None and k not in {"gpu", "port_range"}}
    body["gpu_model"] = _named_id(opts["gpu"], client.get("gpu-models/", auth=False), "GPU model")
    if opts["port_range"]:
        start, sep, end = opts["port_range"].partition("-")
        if not sep or not start.isdigit() or not end.isdigit():
            raise click.BadParameter(_("write START-END, e.g. 40000-40999"), param_hint="--ports")
        body["port_range_start"], body["port_range_end"] = int(start), int(end)
    _server_with_token(client.post("servers/", body), force=False)


@servers.command("list", help=_("Your organisation's servers."))
def servers_list() -> None:
    items = list(state().client().pages("servers/"))
    show(items, lambda d: output.table(d, SERVER_COLUMNS, empty=_("No servers yet: `suanli servers register`.")))


def _server_fields(server: dict) -> None:
    output.fields(
        server,
        [
            *SERVER_COLUMNS,
            (_("hostname"), "hostname"),
            (_("runtime"), "runtime"),
            (_("public host"), "public_host"),
            (_("reason"), "drained_reason"),
        ],
    )
    output.table(
        server.get("gpus") or [],
        [(_("index"), "index"), ("UUID", "uuid"), (_("health"), "health"), (_("allocated"), "allocated")],
        title=_("Cards"),
    )


@servers.command("show", help=_("One server with its cards."))
@click.argument("server_id", type=int)
def servers_show(server_id: int) -> None:
    show(state().client().get(f"servers/{server_id}/"), _server_fields)


@servers.command("drain", help=_("Take no new leases on a server (running ones go on)."))
@click.argument("server_id", type=int)
@click.option("--reason", default="", help=_("Why (shown to staff)."))
def servers_drain(server_id: int, reason: str) -> None:
    show(state().client().post(f"servers/{server_id}/drain/", {"reason": reason}), _server_fields)


@servers.command("undrain", help=_("Take leases on a drained server again."))
@click.argument("server_id", type=int)
def servers_undrain(server_id: int) -> None:
    show(state().client().post(f"servers/{server_id}/undrain/"), _server_fields)


@servers.command("token", help=_("A new enrolment token (the old one stops working) and its install command."))
@click.argument("server_id", type=int)
def servers_token(server_id: int) -> None:
    server = state().client().post(f"servers/{server_id}/enrollment-token/")
    _server_with_token(server, force=bool(server.get("enrolled_at")))


# --- offers (the provider's side) ------------------------------------------------------------------------------

OFFER_COLUMNS = [
    ("id", "id"),
    (_("server"), "server"),
    (_("GPU"), "gpu_model_name"),
    (_("currency"), "currency"),
    (_("prices"), lambda o: _prices_text(o.get("prices"))),
    (_("interruptible"), lambda o: _prices_text(o.get("interruptible_prices"))),
    (_("delisted"), "delisted_at"),
]


def _price_options(f):
    for plan in ("card-hour", "server-month", "pflops-year"):
        f = click.option(
            f"--interruptible-{plan}", metavar="PRICE", help=_("Interruptible price per {plan}.").format(plan=plan)
        )(f)
        f = click.option(f"--{plan}", metavar="PRICE", help=_("Price per {plan}.").format(plan=plan))(f)
    f = click.option("--storage", "storage_gb_month_price", metavar="PRICE", help=_("Volume price per GB-month."))(f)
    f = click.option("--min-cards", "min_gpus", type=int, help=_("Fewest cards a lease may take."))(f)
    f = click.option("--available-until", metavar="ISO", help=_("Listed until then."))(f)
    f = click.option("--currency", type=click.Choice(["USD", "CNY"]), help=_("Currency of the prices."))(f)
    f = click.option("--host-access/--no-host-access", default=None, help=_("Lend the whole host (server-month)."))(f)
    return f


def _offer_body(opts: dict) -> dict:
    body: dict = {}
    prices = {p: opts[p] for p in ("card_hour", "server_month", "pflops_year") if opts.get(p) is not None}
    cheap = {
        p: opts[f"interruptible_{p}"]
        for p in ("card_hour", "server_month", "pflops_year")
        if opts.get(f"interruptible_{p}") is not None
    }
    if prices:
        body["prices"] = prices
    if cheap:
        body["interruptible_prices"] = cheap
    for name in ("storage_gb_month_price", "min_gpus", "available_until", "currency", "host_access"):
        if opts.get(name) is not None:
            body[name] = opts[name]
    return body


@offers.command("create", help=_("List a server: a price per plan you offer (a plan with no price is not offered)."))
@click.option("--server", type=int, required=True, help=_("The server to list."))
@_price_options
def offers_create(server: int, **opts) -> None:
    body = {"server": server, **_offer_body(opts)}
    body.setdefault("prices", {})
    show(state().client().post("offers/", body), lambda o: output.fields(o, OFFER_COLUMNS))


@offers.command("update", help=_("Change an offer's prices or terms (leases running keep theirs)."))
@click.argument("offer_id", type=int)
@_price_options
def offers_update(offer_id: int, **opts) -> None:
    body = _offer_body(opts)
    if not body:
        raise click.UsageError(_("nothing to change: give a price or another option"))
    show(state().client().patch(f"offers/{offer_id}/", body), lambda o: output.fields(o, OFFER_COLUMNS))


@offers.command("delist", help=_("Stop listing an offer (running leases go on)."))
@click.argument("offer_id", type=int)
def offers_delist(offer_id: int) -> None:
    state().client().delete(f"offers/{offer_id}/")
    show({"delisted": offer_id}, lambda d: say(_("Offer {id} delisted.").format(id=offer_id)))


@offers.command("mine", help=_("Your organisation's offers, listed and delisted."))
def offers_mine() -> None:
    items = list(state().client().pages("offers/mine/"))
    show(items, lambda d: output.table(d, OFFER_COLUMNS, empty=_("No offers yet.")))


# --- money -------------------------------------------------------------------------------------------------------

STATEMENT_COLUMNS = [
    ("id", "id"),
    (_("period"), "period"),
    (_("gross"), output.money("gross")),
    (_("commission"), output.money("commission")),
    (_("credits"), output.money("credits")),
    (_("net"), output.money("net")),
    (_("state"), "state"),
]


@cli.command("earnings", help=_("Your monthly statements: gross, commission, SLA credits, net."))
@click.option("--period", metavar="YYYY-MM", help=_("Only this month."))
def earnings(period: str | None) -> None:
    items = list(state().client().pages("payouts/", {"period": period} if period else {}))
    show(items, lambda d: output.table(d, STATEMENT_COLUMNS, empty=_("No statements yet.")))


@cli.command("payouts", help=_("What was paid out for each statement."))
@click.option("--period", metavar="YYYY-MM", help=_("Only this month."))
def payouts(period: str | None) -> None:
    items = [
        {**payout, "statement": statement["id"], "period": statement["period"]}
        for statement in state().client().pages("payouts/", {"period": period} if period else {})
        for payout in statement.get("payouts") or []
    ]
    show(
        items,
        lambda d: output.table(
            d,
            [
                (_("statement"), "statement"),
                (_("period"), "period"),
                ("id", "id"),
                (_("method"), "method"),
                (_("amount"), output.money("amount")),
                (_("state"), "state"),
                (_("reference"), "reference"),
                (_("paid"), "paid_at"),
            ],
            empty=_("No payouts yet."),
        ),
    )
