"""The placement path's two big statements, compiled once per shape instead of once per request.

Building and compiling the best-fit read and the card claim through the ORM (scheduler/selectors.py,
scheduler/locks.py) costs more CPU than PostgreSQL spends running them. Both are still built by the same selectors,
so there is one definition of which cards may be allocated; `compiled` builds a queryset once with stand-in values
for what changes from one request to the next (an instant, a period, a server), compiles it, notes where each
stand-in landed among the parameters, and afterwards only puts the real values there. Whatever shapes the SQL (the
filters, a card count that becomes a LIMIT) is part of the key, so a different shape is compiled on its own.

`fetch_dicts` runs them prepared (parsed once per connection; the claim's plan, and the best fit's, made once too)
and sends what goes with them (the claim's savepoint) in the same round trip.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Hashable, Mapping
from datetime import UTC, datetime
from typing import Any

from django.db import connections
from django.db.backends.postgresql.base import ServerBindingCursor
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


class _PreparingCursor(ServerBindingCursor):
    """A cursor that binds on the server and prepares every statement with parameters (PostgreSQL parses it once per
    connection; the compiled statements here are few and always the same text). One without (a SAVEPOINT, whose
    name changes) is not prepared."""

    def execute(self, query, params=None, *, prepare=None, binary=None):  # type: ignore[no-untyped-def, override]
        return super().execute(query, params, prepare=params is not None if prepare is None else prepare, binary=binary)


def _cursor(using: str) -> Any:
    """A preparing cursor on the connection, in Django's wrapper (its error mapping, execute wrappers and, when
    queries are recorded, the debug cursor's record). Django turns psycopg's preparing off (for connection poolers in
    transaction mode) and its own cursors bind on the client and never prepare: this lets the statements that ask for
    it be prepared, as inventory/ingest.py's are; put a pooler in front of PostgreSQL in session mode, or one that
    tracks prepared statements (PgBouncer 1.21+)."""
    connection = connections[using]
    connection.ensure_connection()
    raw = connection.connection
    if raw.prepare_threshold is None:
        raw.prepare_threshold = sys.maxsize  # only what asks for it (prepare=True) is prepared
    cursor = _PreparingCursor(raw)
    return connection.make_debug_cursor(cursor) if connection.queries_logged else connection.make_cursor(cursor)


# Statements sent around one whose plan is better made once for every value than per call (`fetch_dicts`'s `generic`):
# PostgreSQL keeps planning a prepared statement per call (a custom plan) while its estimate of the generic plan is
# above the custom plans' average, which it is for the best fit whatever their actual times (0.25 ms both at 12,500
# servers, where planning it took 2-6 ms). SET is transactional, so a failure in between rolls the setting back with
# the transaction.
_GENERIC_BEFORE = ("SET plan_cache_mode = force_generic_plan",)
_GENERIC_AFTER = ("RESET plan_cache_mode",)


def fetch_dicts(
    sql: str, params: list[Any], *, before: str | None = None, generic: bool = False, using: str = "default"
) -> list[dict[str, Any]]:
    """Run a compiled statement, prepared; its rows as dicts by column name (a `values()` queryset's names).
    `before`: a statement without parameters (a SAVEPOINT) sent ahead of it in the same round trip (pipeline mode).
    `generic`: PostgreSQL plans it once per connection, for every value (a generic plan), not once per call: only
    for a statement whose generic plan is known to be as good as its custom ones (see `_GENERIC_BEFORE`)."""
    connection = connections[using]
    ahead = (*((before,) if before is not None else ()), *(_GENERIC_BEFORE if generic else ()))
    behind = _GENERIC_AFTER if generic else ()
    with _cursor(using) as cursor, _cursor(using) as side:
        if not ahead and not behind:
            cursor.execute(sql, params)
            rows = cursor.fetchall()
        else:
            # All sent before the first result is read: one round trip.
            with connection.wrap_database_errors, connection.connection.pipeline():
                for statement in ahead:
                    side.execute(statement)
                cursor.execute(sql, params)
                for statement in behind:
                    side.execute(statement)
                rows = cursor.fetchall()
        names = [column.name for column in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in rows]
