"""A read replica for the heavy reads (docs/scaling.md): offer search, telemetry charts and /metrics.

`DATABASE_REPLICA_URL` (README.md, Configuration) adds the database alias `replica`: a streaming replica of the
primary, as PostgreSQL's hot standby serves one. Nothing is sent there implicitly: the selectors that may read a
little behind the primary ask for `read_alias()` (marketplace.selectors.offers_listed, inventory.telemetry.series,
inventory.metrics);
everything else, and every write, stays on `default`. Without the setting `read_alias()` is `default` and nothing
changes.

The replica's sessions are read-only (`default_transaction_read_only`), as a hot standby's are, so a write that
strayed there fails instead of landing on a copy. `PrimaryReplicaRouter` keeps writes on the primary even for an
object read from the replica (Django would otherwise save it, or a row pointing at it, where it was read).

Imported by config.settings (`replica_settings`): nothing from django.db or the models at module level.
"""

from __future__ import annotations

from typing import Any

import dj_database_url

PRIMARY = "default"
REPLICA = "replica"
READ_ONLY = "-c default_transaction_read_only=on"


def replica_settings(url: str, primary: dict[str, Any]) -> dict[str, Any]:
    """The `replica` alias for `url`: the primary's engine and session options (JIT off, the pool), read-only
    sessions, and in tests a mirror of the primary's test database (the test runner creates none for it)."""
    replica = dj_database_url.parse(url)
    replica["ENGINE"] = primary["ENGINE"]
    options = {**primary.get("OPTIONS", {}), **replica.get("OPTIONS", {})}
    session = options.get("options", "")
    options["options"] = session if READ_ONLY in session else f"{session} {READ_ONLY}".strip()
    if "pool" in options:
        options["pool"] = dict(options["pool"])
    replica["OPTIONS"] = options
    for key in ("CONN_MAX_AGE", "CONN_HEALTH_CHECKS"):
        if key in primary:
            replica[key] = primary[key]
    replica["TEST"] = {"MIRROR": PRIMARY}
    return replica


def read_alias() -> str:
    """Where a read that may lag the primary by the replication delay goes: `replica` when configured."""
    from django.db import connections

    return REPLICA if REPLICA in connections.settings else PRIMARY


class PrimaryReplicaRouter:
    """Writes always on the primary; reads where the code asked (`.using(read_alias())`), else the primary; the
    schema is migrated on the primary only (the replica copies it)."""

    def db_for_read(self, model, **hints) -> None:
        return None  # no opinion: the queryset's own alias, an instance's, or the primary

    def db_for_write(self, model, **hints) -> str:
        return PRIMARY

    def allow_relation(self, obj1, obj2, **hints) -> bool | None:
        if {obj1._state.db, obj2._state.db} <= {PRIMARY, REPLICA, None}:
            return True  # the same rows: the replica is a copy of the primary
        return None

    def allow_migrate(self, db, app_label, model_name=None, **hints) -> bool:
        return db == PRIMARY
