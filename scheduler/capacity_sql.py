"""The capacity model's SQL: per-server free-card counts kept by database triggers in the transaction that writes the
allocation or card rows they count (scheduler.models.Capacity; the migration installs it).

Every statement that inserts, updates, deletes or truncates allocations, and every card inserted, deleted or
changing its health, drain or cleaning state, recounts the servers it touched, so no code path can forget it. A
recount first locks the servers' capacity rows (id order), then counts in a later statement: under READ COMMITTED
each statement of a volatile function takes a new snapshot, so a recount waiting for another writer of the same
server sees that writer's committed rows and the last committer always leaves the true count.

A row counts the cards that are allocatable as cards (not failed, not drained, not waiting to be reported clean) at
`as_of` (the recount's clock): `free_now` (no allocation holds it at that instant) and `free_onward` (none holds it
at that instant or any later one). Time moves on without a write: `valid_until` is the first start or end of an
allocation of those cards after `as_of` (9999-12-31 when none), and a row answers for an instant before it only
(readers count live from the allocation rows otherwise; scheduler.selectors). `capacity_refresh()` recounts the rows
whose `valid_until` has passed (leases_run does, every 30 s). Server-level conditions (online, undrained, its
provider and offer) are the readers' joins; the exclusion constraint on allocations stays the last word on double
booking.
"""

# The recount. `{layer}` is empty in the first version (migration 0007, before resale) and `AND al.layer = 0` since
# resale (migration scheduler/0010_resale): a resale allocation (layer 1) lies inside its backing allocation of the
# same card, which already counts the card as held, so it changes no count and no boundary.
_RECOUNT_TEMPLATE = r"""
CREATE OR REPLACE FUNCTION scheduler_capacity_recount(sids bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  t timestamptz;
BEGIN
  IF sids IS NULL OR cardinality(sids) = 0 THEN
    RETURN;
  END IF;
  INSERT INTO scheduler_capacity (server_id, ok_cards, free_now, free_onward, as_of, valid_until)
  SELECT s, 0, 0, 0, 'epoch', 'epoch' FROM (SELECT DISTINCT unnest(sids) AS s) x ORDER BY s
  ON CONFLICT (server_id) DO NOTHING;
  PERFORM 1 FROM scheduler_capacity WHERE server_id = ANY (sids) ORDER BY server_id FOR UPDATE;
  t := clock_timestamp();
  UPDATE scheduler_capacity c
     SET ok_cards = x.ok, free_now = x.free_now, free_onward = x.free_onward, as_of = t, valid_until = x.valid_until
    FROM (
      SELECT s.id AS server_id,
             coalesce(count(g.id) FILTER (WHERE g.ok), 0) AS ok,
             coalesce(count(g.id) FILTER (WHERE g.ok AND NOT g.held_now), 0) AS free_now,
             coalesce(count(g.id) FILTER (WHERE g.ok AND g.next_boundary IS NULL AND NOT g.held_onward), 0)
               AS free_onward,
             coalesce(min(g.next_boundary) FILTER (WHERE g.ok), '9999-12-31 00:00:00+00') AS valid_until
        FROM (SELECT DISTINCT unnest(sids) AS id) s
        LEFT JOIN LATERAL (
          SELECT gpu.id,
                 (gpu.health <> 'failed' AND NOT gpu.drained AND NOT gpu.needs_cleaning) AS ok,
                 coalesce(a.held_now, false) AS held_now,
                 coalesce(a.held_onward, false) AS held_onward,
                 a.next_boundary
            FROM inventory_gpu gpu
            LEFT JOIN LATERAL (
              SELECT bool_or(al.period @> t) AS held_now,
                     bool_or(upper_inf(al.period)) AS held_onward,
                     min(CASE WHEN lower(al.period) > t THEN lower(al.period) ELSE upper(al.period) END)
                       AS next_boundary
                FROM scheduler_allocation al
               WHERE al.gpu_id = gpu.id AND al.period && tstzrange(t, NULL, '[)'){layer}
            ) a ON true
           WHERE gpu.server_id = s.id
        ) g ON true
       GROUP BY s.id
    ) x
   WHERE c.server_id = x.server_id;
END $$;

"""

RECOUNT_V1_SQL = _RECOUNT_TEMPLATE.replace("{layer}", "")
RECOUNT_SQL = _RECOUNT_TEMPLATE.replace("{layer}", " AND al.layer = 0")

_CREATE_REST_SQL = r"""
CREATE OR REPLACE FUNCTION scheduler_capacity_refresh() RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  sids bigint[];
BEGIN
  SELECT array_agg(server_id ORDER BY server_id) INTO sids
    FROM scheduler_capacity WHERE valid_until <= clock_timestamp();
  PERFORM scheduler_capacity_recount(sids);
  RETURN coalesce(cardinality(sids), 0);
END $$;

CREATE OR REPLACE FUNCTION scheduler_capacity_recount_all() RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  sids bigint[];
BEGIN
  DELETE FROM scheduler_capacity c WHERE NOT EXISTS (SELECT 1 FROM inventory_server s WHERE s.id = c.server_id);
  SELECT array_agg(id ORDER BY id) INTO sids FROM inventory_server;
  PERFORM scheduler_capacity_recount(sids);
  RETURN coalesce(cardinality(sids), 0);
END $$;

CREATE OR REPLACE FUNCTION scheduler_capacity_on_new_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM scheduler_capacity_recount(ARRAY(SELECT DISTINCT server_id FROM new_rows));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION scheduler_capacity_on_old_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM scheduler_capacity_recount(ARRAY(SELECT DISTINCT server_id FROM old_rows));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION scheduler_capacity_on_changed_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM scheduler_capacity_recount(
    ARRAY(SELECT server_id FROM old_rows UNION SELECT server_id FROM new_rows));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION scheduler_capacity_on_card() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM scheduler_capacity_recount(ARRAY[OLD.server_id, NEW.server_id]);
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION scheduler_capacity_on_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM scheduler_capacity_recount_all();
  RETURN NULL;
END $$;

CREATE TRIGGER scheduler_capacity_allocation_insert AFTER INSERT ON scheduler_allocation
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_new_rows();
CREATE TRIGGER scheduler_capacity_allocation_update AFTER UPDATE ON scheduler_allocation
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_changed_rows();
CREATE TRIGGER scheduler_capacity_allocation_delete AFTER DELETE ON scheduler_allocation
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_old_rows();
CREATE TRIGGER scheduler_capacity_allocation_truncate AFTER TRUNCATE ON scheduler_allocation
  FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_truncate();

CREATE TRIGGER scheduler_capacity_gpu_insert AFTER INSERT ON inventory_gpu
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_new_rows();
CREATE TRIGGER scheduler_capacity_gpu_delete AFTER DELETE ON inventory_gpu
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_old_rows();
-- Agent reports rewrite health and drain on every card each time: only a real change recounts.
CREATE TRIGGER scheduler_capacity_gpu_state AFTER UPDATE OF health, drained, needs_cleaning, server_id
  ON inventory_gpu FOR EACH ROW
  WHEN (OLD.health IS DISTINCT FROM NEW.health OR OLD.drained IS DISTINCT FROM NEW.drained
        OR OLD.needs_cleaning IS DISTINCT FROM NEW.needs_cleaning OR OLD.server_id IS DISTINCT FROM NEW.server_id)
  EXECUTE FUNCTION scheduler_capacity_on_card();
CREATE TRIGGER scheduler_capacity_gpu_truncate AFTER TRUNCATE ON inventory_gpu
  FOR EACH STATEMENT EXECUTE FUNCTION scheduler_capacity_on_truncate();

SELECT scheduler_capacity_recount_all();
"""

CREATE_SQL = RECOUNT_V1_SQL + _CREATE_REST_SQL

DROP_SQL = r"""
DROP TRIGGER IF EXISTS scheduler_capacity_allocation_insert ON scheduler_allocation;
DROP TRIGGER IF EXISTS scheduler_capacity_allocation_update ON scheduler_allocation;
DROP TRIGGER IF EXISTS scheduler_capacity_allocation_delete ON scheduler_allocation;
DROP TRIGGER IF EXISTS scheduler_capacity_allocation_truncate ON scheduler_allocation;
DROP TRIGGER IF EXISTS scheduler_capacity_gpu_insert ON inventory_gpu;
DROP TRIGGER IF EXISTS scheduler_capacity_gpu_delete ON inventory_gpu;
DROP TRIGGER IF EXISTS scheduler_capacity_gpu_state ON inventory_gpu;
DROP TRIGGER IF EXISTS scheduler_capacity_gpu_truncate ON inventory_gpu;
DROP FUNCTION IF EXISTS scheduler_capacity_on_truncate();
DROP FUNCTION IF EXISTS scheduler_capacity_on_card();
DROP FUNCTION IF EXISTS scheduler_capacity_on_changed_rows();
DROP FUNCTION IF EXISTS scheduler_capacity_on_old_rows();
DROP FUNCTION IF EXISTS scheduler_capacity_on_new_rows();
DROP FUNCTION IF EXISTS scheduler_capacity_recount_all();
DROP FUNCTION IF EXISTS scheduler_capacity_refresh();
DROP FUNCTION IF EXISTS scheduler_capacity_recount(bigint[]);
"""
