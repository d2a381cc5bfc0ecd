"""The `suanli` command group and what every command shares: the global options (also accepted after a
subcommand: `suanli leases list --json`), the resolved settings and API client, and how errors become exit codes."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import click

from cli import __version__, config, output
from cli.client import EXIT_API, EXIT_USAGE, ApiError, Client
from cli.i18n import LANGUAGE, LANGUAGES, _
from cli.query import QueryError


@dataclass
class State:
    """One invocation: its options, then (lazily) its settings and client."""

    api_url: str | None = None
    org: str | None = None
    profile: str | None = None
    json: bool = False
    new_profile: bool = False  # login may name a profile that does not exist yet
    _settings: config.Settings | None = field(default=None, repr=False)
    _client: Client | None = field(default=None, repr=False)

    @property
    def settings(self) -> config.Settings:
        if self._settings is None:
            self._settings = config.Settings.resolve(
                profile=self.profile, api_url=self.api_url, org=self.org, new=self.new_profile
            )
        return self._settings

    def client(self, *, auth: bool = True) -> Client:
        """The API client; with `auth` it needs a token (run `suanli login`) and names the organisation by id."""
        if self._client is None:
            settings = self.settings
            self._client = Client(settings.api_url, settings.token, None, LANGUAGE)
            if settings.org:
                self._client.org = self._org_id(self._client, settings.org)
        if auth and not self._client.token:
            raise ApiError(
                401, "not_logged_in", _("not logged in to {url}: run `suanli login`").format(url=self.settings.api_url)
            )
        return self._client

    @staticmethod
    def _org_id(client: Client, org: str) -> str:
        """`--org` as given: an id, or an organisation's name, looked up among the caller's own."""
        if org.isdigit() or not client.token:
            return org
        for item in client.pages("orgs/"):
            if item["name"].lower() == org.lower():
                return str(item["id"])
        raise ApiError(404, "not_found", _("you belong to no organisation named {name!r}").format(name=org))


def state() -> State:
    return click.get_current_context().ensure_object(State)


def _setter(name: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, _param: click.Parameter, value: Any) -> None:
        if value not in (None, False):
            setattr(ctx.ensure_object(State), name, value)

    return store


def _kept(*decls: str, into: str, **kwargs: Any) -> Callable:
    """An option not passed to the command: given, it is kept on the invocation's State as `into`."""
    return click.option(*decls, expose_value=False, callback=_setter(into), **kwargs)


def global_options(f: Callable) -> Callable:
    """--api-url, --org, --profile, --json and --lang, on the group and on every command."""
    options = [
        _kept(
            "--api-url",
            into="api_url",
            metavar="URL",
            help=_("The site (default: the profile's, SUANLI_API_URL, http://127.0.0.1:8000)."),
        ),
        _kept(
            "--org",
            into="org",
            metavar="ID|NAME",
            help=_("Act for this organisation (also SUANLI_ORG; default: your first)."),
        ),
        _kept("--profile", into="profile", metavar="NAME", help=_("Use this saved profile (also SUANLI_PROFILE).")),
        _kept("--json", "as_json", into="json", is_flag=True, help=_("Print the API's JSON instead of a table.")),
        click.option(
            "--lang",
            type=click.Choice(LANGUAGES),
            expose_value=False,
            help=_("Language of messages and help: en or zh_Hans (default: from LANG / LC_ALL)."),
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


class Group(click.Group):
    """A group whose subcommands get the global options too, listed in the order they were added."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)

    def command(self, *args: Any, **kwargs: Any) -> Callable:
        make = super().command(*args, **kwargs)
        return lambda f: make(global_options(f))

    def group(self, *args: Any, **kwargs: Any) -> Callable:
        kwargs.setdefault("cls", Group)
        make = super().group(*args, **kwargs)
        return lambda f: make(global_options(f))


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


@click.group(cls=Group, context_settings=CONTEXT, help=_("Rent and sell GPU capacity on Suanli from the command line."))
@click.version_option(__version__, prog_name="suanli", message="%(prog)s %(version)s")
@global_options
def cli() -> None:
    pass


def show(data: Any, render: Callable[[Any], None]) -> None:
    """`data` as JSON with --json, else as `render` draws it."""
    if state().json:
        output.json_out(data)
    else:
        render(data)


def say(message: str) -> None:
    """A message for people (stderr), never mixed into --json output."""
    output.err.print(message)


def fail(message: str, code: int = EXIT_API) -> None:
    output.err.print(f"[red]{_('Error')}:[/red] {message}")
    sys.exit(code)


def handles_errors(main: Callable[..., Any]) -> Callable[..., Any]:
    """Run `main`, turning the API's errors, bad queries and unreadable configuration into exit codes."""

    @functools.wraps(main)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except ApiError as exc:
            if _json_requested() and exc.body:
                output.json_out(exc.body)
            where = f" (HTTP {exc.status})" if exc.status else ""
            output.err.print(f"[red]{_('Error')}:[/red] {exc.code}{where}: {exc.message}", markup=True)
            for name, problems in exc.fields.items():
                text = "; ".join(str(p) for p in problems) if isinstance(problems, list) else str(problems)
                output.err.print(f"  {name}: {text}", markup=False)
            sys.exit(exc.exit_code)
        except QueryError as exc:
            output.err.print(f"[red]{_('Error')}:[/red] {exc.message}")
            output.err.print(exc.pointer(), markup=False, highlight=False)
            sys.exit(EXIT_USAGE)
        except config.ConfigError as exc:
            fail(str(exc))

    return run


def _json_requested() -> bool:
    return "--json" in sys.argv[1:]
