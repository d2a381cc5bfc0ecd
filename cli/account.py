"""Signing in and choosing where: `login`, `logout`, `whoami`, `orgs`, `profiles`, and shell completion."""

from __future__ import annotations

import os
import socket
import sys

import click
from click.shell_completion import get_completion_class

from cli import config, output
from cli.app import cli, say, show, state
from cli.client import ApiError, Client
from cli.i18n import LANGUAGE, _


@cli.command(help=_("Sign in and keep the token in your config directory (mode 0600)."))
@click.option("--email", help=_("Sign in with this e-mail and a password (asked for, or --password-stdin)."))
@click.option("--password-stdin", is_flag=True, help=_("Read the password from standard input."))
@click.option("--api-key", metavar="KEY", help=_('Use this API key instead ("-" reads it from standard input).'))
@click.option("--name", "key_name", metavar="NAME", help=_("Name of the API key the sign-in makes."))
@click.option(
    "--code",
    metavar="CODE",
    help=_("The two-factor code of your authenticator app, or a recovery code (asked for when the account needs one)."),
)
def login(email: str | None, password_stdin: bool, api_key: str | None, key_name: str | None, code: str | None) -> None:
    st = state()
    st.new_profile = True
    settings = st.settings
    anonymous = Client(settings.api_url, None, None, LANGUAGE)
    if api_key:
        token = sys.stdin.readline().strip() if api_key == "-" else api_key.strip()
    else:
        if not email:
            email = click.prompt(_("E-mail"))
        password = sys.stdin.readline().rstrip("\n") if password_stdin else click.prompt(_("Password"), hide_input=True)
        name = key_name or f"suanli-cli@{socket.gethostname()}"[:100]
        body = {"email": email, "password": password, "name": name}
        if code:
            body["code"] = code.strip()
        try:
            answer = anonymous.post("auth/token/", body, auth=False)
        except ApiError as exc:
            if exc.code != "mfa_required" or code:
                raise
            # The account has two-factor authentication: ask for the code (the next line of standard input when
            # the password came from it) and send everything again.
            try:
                body["code"] = click.prompt(_("Two-factor code (or a recovery code)"), err=True).strip()
            except click.Abort:  # no terminal and no further line: the API's own answer says what to do
                raise exc from None
            answer = anonymous.post("auth/token/", body, auth=False)
        token = answer["token"]
    checked = Client(settings.api_url, token, None, LANGUAGE)
    orgs = list(checked.pages("orgs/"))  # proves the token works (401 otherwise)
    org = st.org or settings.org
    path = config.store_profile(settings.profile, api_url=settings.api_url, token=token, email=email, org=org)
    result = {
        "profile": settings.profile,
        "api_url": settings.api_url,
        "email": email,
        "config": str(path),
        "organizations": [{"id": o["id"], "name": o["name"], "role": o.get("role")} for o in orgs],
    }

    def render(_data: dict) -> None:
        say(
            _("Logged in to {url} (profile {profile}); credentials in {path}.").format(
                url=settings.api_url, profile=settings.profile, path=path
            )
        )
        output.table(result["organizations"], [("id", "id"), (_("organisation"), "name"), (_("role"), "role")])

    show(result, render)


@cli.command(help=_("Create an account with a new organisation, and sign in as it."))
@click.option("--email", required=True, help=_("Your e-mail address."))
@click.option("--org-name", required=True, help=_("Your organisation's name."))
@click.option(
    "--kind",
    type=click.Choice(["customer", "provider"]),
    default="customer",
    show_default=True,
    help=_("Rent capacity (customer) or sell it (provider; staff approve it first)."),
)
@click.option(
    "--currency",
    type=click.Choice(["USD", "CNY"]),
    default="USD",
    show_default=True,
    help=_("The organisation's currency."),
)
@click.option("--password-stdin", is_flag=True, help=_("Read the password from standard input."))
def register(email: str, org_name: str, kind: str, currency: str, password_stdin: bool) -> None:
    st = state()
    st.new_profile = True
    settings = st.settings
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = click.prompt(_("Password"), hide_input=True, confirmation_prompt=True)
    anonymous = Client(settings.api_url, None, None, LANGUAGE)
    body = {
        "email": email,
        "password": password,
        "organization": {"name": org_name, "kind": kind, "currency": currency},
    }
    answer = anonymous.post("auth/register/", body, auth=False)
    path = config.store_profile(settings.profile, api_url=settings.api_url, token=answer["token"], email=email)

    def render(d: dict) -> None:
        org = d.get("organization") or {}
        say(
            _("Registered {email} with {org} ({status}); profile {profile} in {path}.").format(
                email=email, org=org.get("name"), status=org.get("status"), profile=settings.profile, path=path
            )
        )
        if d.get("verification"):
            say(d["verification"])

    show({key: value for key, value in answer.items() if key != "token"}, render)


@cli.command(help=_("Verify your e-mail address with the key from the link mailed to you (its last part)."))
@click.argument("key", required=False)
@click.option("--resend", "resend_to", metavar="EMAIL", help=_("Mail a new link to this address instead."))
def verify(key: str | None, resend_to: str | None) -> None:
    st = state()
    anonymous = Client(st.settings.api_url, None, None, LANGUAGE)
    if resend_to:
        answer = anonymous.post("auth/verification/", {"email": resend_to}, auth=False)
        show(answer, lambda d: say(d.get("detail") or ""))
        return
    if not key:
        raise click.UsageError(_("give the key from the link, or --resend EMAIL"))
    key = key.rstrip("/").rsplit("/", 1)[-1]  # the whole link works too
    answer = anonymous.post("auth/verification/confirm/", {"key": key}, auth=False)
    show(answer, lambda d: say(_("Your e-mail address is verified.")))


@cli.command(help=_("Forget this profile's token (and revoke it on the site)."))
@click.option("--keep-key", is_flag=True, help=_("Do not revoke the API key on the site."))
def logout(keep_key: bool) -> None:
    st = state()
    settings = st.settings
    revoked = False
    if settings.token and not keep_key:
        client = st.client()
        prefix = settings.token.split("_")[1] if settings.token.count("_") >= 2 else None
        for key in client.pages("auth/keys/"):
            if prefix and key.get("prefix") == prefix and not key.get("revoked_at"):
                client.delete(f"auth/keys/{key['id']}/")
                revoked = True
    removed = config.remove_credentials(settings.profile)
    show(
        {"profile": settings.profile, "forgotten": removed, "revoked": revoked},
        lambda d: say(_("Logged out of profile {profile}.").format(profile=d["profile"])),
    )


@cli.command(help=_("Who you are signed in as, and where."))
def whoami() -> None:
    st = state()
    client = st.client()
    orgs = list(client.pages("orgs/"))
    data = {"profile": st.settings.profile, "api_url": st.settings.api_url, "org": client.org, "organizations": orgs}

    def render(d: dict) -> None:
        say(_("Profile {profile} at {url}").format(profile=d["profile"], url=d["api_url"]))
        output.table(
            orgs,
            [
                ("id", "id"),
                (_("organisation"), "name"),
                (_("kind"), "kind"),
                (_("status"), "status"),
                (_("role"), "role"),
                (_("currency"), "currency"),
            ],
        )

    show(data, render)


@cli.group(help=_("Your organisations."))
def orgs() -> None:
    pass


@orgs.command("list", help=_("The organisations you belong to."))
def orgs_list() -> None:
    items = list(state().client().pages("orgs/"))
    show(
        items,
        lambda d: output.table(
            d,
            [
                ("id", "id"),
                (_("organisation"), "name"),
                (_("kind"), "kind"),
                (_("status"), "status"),
                (_("role"), "role"),
            ],
        ),
    )


@cli.group(help=_("Saved profiles (one per site or account)."))
def profiles() -> None:
    pass


@profiles.command("list", help=_("Every saved profile; * marks the default."))
def profiles_list() -> None:
    data = config.load()
    default = data.get("default_profile")
    rows = [
        {
            "name": name,
            "default": name == default,
            "api_url": p.get("api_url"),
            "email": p.get("email"),
            "org": p.get("org"),
            "logged_in": bool(p.get("token")),
        }
        for name, p in sorted(data["profiles"].items())
    ]
    show(
        rows,
        lambda d: output.table(
            d,
            [
                ("", lambda r: "*" if r["default"] else ""),
                (_("profile"), "name"),
                (_("site"), "api_url"),
                (_("e-mail"), "email"),
                (_("organisation"), "org"),
                (_("logged in"), "logged_in"),
            ],
            empty=_("No profiles yet: run `suanli login`."),
        ),
    )


@profiles.command("use", help=_("Make NAME the default profile."))
@click.argument("name")
def profiles_use(name: str) -> None:
    config.use_profile(name)
    show({"default_profile": name}, lambda d: say(_("Default profile: {name}").format(name=name)))


@profiles.command("set", help=_("Set a profile's site or organisation without signing in again."))
@click.argument("name")
@click.option("--site", "site", metavar="URL", help=_("The site's address."))
@click.option("--organisation", "organisation", metavar="ID", help=_("The organisation to act for."))
def profiles_set(name: str, site: str | None, organisation: str | None) -> None:
    path = config.store_profile(name, api_url=site.rstrip("/") if site else None, org=organisation)
    show({"profile": name, "config": str(path)}, lambda d: say(_("Saved profile {name}.").format(name=name)))


@cli.command(help=_('Print the shell completion script: eval "$(suanli completion bash)".'))
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]), required=False)
def completion(shell: str | None) -> None:
    shell = shell or os.path.basename(os.environ.get("SHELL", "bash"))
    completer = get_completion_class(shell)
    if completer is None:
        raise ApiError(None, "unsupported_shell", _("no completion for {shell}").format(shell=shell))
    ctx = click.get_current_context()
    sys.stdout.write(completer(cli, {}, "suanli", "_SUANLI_COMPLETE").source() + "\n")
    ctx.exit(0)
