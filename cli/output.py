"""What the commands print: rich tables and key/value panels for people, the API's own JSON with `--json`.

Data and tables go to stdout, messages and progress to stderr, so `suanli ... --json | jq` always reads JSON."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

from cli.client import dumps

Column = tuple[str, str | Callable[[dict], Any]]

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


def value(item: dict, key: str | Callable[[dict], Any]) -> str:
    if callable(key):
        got = key(item)
    else:
        got = item
        for part in key.split("."):
            got = got.get(part) if isinstance(got, dict) else None
    if got is None or got == "":
        return "-"
    if isinstance(got, bool):
        return "yes" if got else "no"
    if isinstance(got, list | tuple):
        return ", ".join(str(x) for x in got) or "-"
    return str(got)


def table(rows: Iterable[dict], columns: Sequence[Column], *, title: str | None = None, empty: str = "") -> None:
    rows = list(rows)
    if not rows and empty:
        err.print(empty)
        return
    grid = Table(title=title, show_lines=False, header_style="bold")
    for header, _ in columns:
        grid.add_column(header, overflow="fold")
    for row in rows:
        grid.add_row(*(value(row, key) for _, key in columns))
    out.print(grid)


def fields(item: dict, columns: Sequence[Column], *, title: str | None = None) -> None:
    grid = Table(title=title, show_header=False, box=None, pad_edge=False)
    grid.add_column(style="bold")
    grid.add_column(overflow="fold")
    for header, key in columns:
        grid.add_row(header, value(item, key))
    out.print(grid)


def json_out(data: Any) -> None:
    sys.stdout.write(dumps(data) + "\n")
    sys.stdout.flush()


def money(amount_key: str, currency_key: str = "currency") -> Callable[[dict], str | None]:
    def show(item: dict) -> str | None:
        amount = item.get(amount_key)
        return None if amount is None else f"{amount} {item.get(currency_key) or ''}".strip()

    return show
