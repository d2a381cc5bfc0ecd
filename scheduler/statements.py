"""The placement path's two big statements, compiled once per shape instead of once per request.

Building and compiling the best-fit read and the card claim through the ORM (scheduler/selectors.py,
scheduler/locks.py) costs more CPU than PostgreSQL spends running them. Both are still built by the same selectors,
so there is one definition of which cards may be allocated; `compiled` builds a queryset once with stand-in values
for what changes from one request to the next (an instant, a period, a server), compiles it, notes where each
stand-in landed among the parameters, and afterwards only puts the real values there. Whatever shapes the SQL (the
filters, a card count that becomes a LIMIT) is part of the key, so a different shape is compiled on its own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.backends.postgresql.psycopg_any import DateTimeTZRange
from django.db.models import QuerySet

# Values no request uses, each found by equality among a compiled statement's parameters.
STAND_INS: dict[str, Any] = {
    "at": datetime(1901, 2, 3, 4, 5, 6, 789012, tzinfo=UTC),
    "server_id": -4_611_686_018_427_387_001,
    "until": datetime(1901, 2, 3, 4, 5, 7, 654321, tzinfo=UTC),
}
STAND_INS["open_period"] = DateTimeTZRange(STAND_INS["at"], None, "[)")
STAND_INS["period"] = DateTimeTZRange(STAND_INS["at"], STAND_INS["until"], "[)")

# Distinct shapes kept per process (filters differ in model, region, server...): beyond it the cache starts over.
MOST_SHAPES = 512

_cache: dict[Hashable, tuple[str, tuple[Any, ...], tuple[tuple[int, str], ...]]] = {}
_lock = threading.Lock()


def compiled(
    key: Hashable, build: Callable[[Mapping[str, Any]], QuerySet], values: Mapping[str, Any], *, using: str = "default"
) -> tuple[str, list[Any]]:
    """The SQL and parameters of `build(values)`: `build` is called (once per `key`) with the stand-ins of the
    names in `values`, and must use each of them as a query parameter, so that the real values can take their
    places; the key must name everything else the statement depends on."""
    entry = _cache.get(key)
    if entry is None:
        stand_ins = {name: STAND_INS[name] for name in values}
        sql, params = build(stand_ins).query.get_compiler(using=using).as_sql()
        slots = tuple(
            (index, name)
            for index, param in enumerate(params)
            for name, stand_in in stand_ins.items()
            if type(param) is type(stand_in) and param == stand_in
        )
        missing = set(stand_ins) - {name for _, name in slots}
        if missing:
            raise ValueError(f"the statement does not take {sorted(missing)} as parameters")
        entry = (sql, tuple(params), slots)
        with _lock:
            if len(_cache) >= MOST_SHAPES:
                _cache.clear()
            _cache[key] = entry
    sql, params, slots = entry
    bound = list(params)
    for index, name in slots:
        bound[index] = values[name]
    return sql, bound


def fetch_dicts(sql: str, params: list[Any], *, using: str = "default") -> list[dict[str, Any]]:
    """Run a compiled statement; its rows as dicts by column name (a `values()` queryset's names)."""
    with connections[using].cursor() as cursor:
        cursor.execute(sql, params)
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]
