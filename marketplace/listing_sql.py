"""The offer listing's SQL (marketplace.models.OfferListing): one search row per live offer, kept by database triggers
in the transaction that writes what it copies, so no code path can forget it (the migration installs it).

`marketplace_listing_sync(server ids)` rewrites the rows of every live offer on those servers (and deletes those of
offers no longer live there) from the offer, server, organisation, capacity, workload, lease and outage rows. The
triggers call it for the servers a statement touched: offers (any change), servers (the columns copied), an
organisation's status or kind (its servers and its offers' servers), workloads (new ones, or a change of server,
start, creation or lease), a lease becoming failed or no longer failed (its workloads' servers), outages. The capacity
rows, rewritten on every allocation, are copied by a lighter trigger (`free_now`, `ok_cards`, `valid_until` only, and
only into rows that take their free cards from the server: `free_from_capacity`, false for a resale offer, whose free
cards are its contract's: readers count those live, and its own code may keep `free_*` instead).

Concurrency, as for the capacity rows: a sync first takes the server's capacity row FOR SHARE (waiting for an
allocation's recount in flight), then a per-server advisory lock (every sync of a server, one at a time; a sync of
more than 64 servers takes one exclusive lock that every smaller sync shares), then the listing rows FOR UPDATE, and
only then reads, in a later statement: under READ COMMITTED each statement of a volatile function takes a new
snapshot, so the last committer leaves the true row. The locks are taken in that order everywhere (capacity row,
advisory, listing row), the order an allocation already takes them in.

Reliability depends on time: its parts are counted over the 30 days before the sync (`rel_as_of`) and answer until
`rel_valid_until`, the first instant a counted workload or outage leaves that window or an outage begun before it
stops counting whole. Readers compute live where a row does not answer for their instant (marketplace.selectors);
the marketplace.refresh_listings job re-syncs the rows whose time has passed, 64 servers a transaction
(marketplace.listing.listings_refresh; `marketplace_listing_refresh()` does all of them in one).
"""

# Reliability's window is marketplace.selectors.RELIABILITY_WINDOW, 30 days: '2592000 seconds' below (a test holds
# them equal).
CREATE_SQL = r"""
CREATE OR REPLACE FUNCTION marketplace_listing_sync(sids bigint[]) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  ids bigint[];
  t timestamptz;
  since timestamptz;
  win constant interval := interval '2592000 seconds';
BEGIN
  ids := ARRAY(SELECT DISTINCT s FROM unnest(sids) s WHERE s IS NOT NULL ORDER BY s);
  IF cardinality(ids) = 0 THEN
    RETURN;
  END IF;
  PERFORM 1 FROM scheduler_capacity WHERE server_id = ANY (ids) ORDER BY server_id FOR SHARE;
  IF cardinality(ids) > 64 THEN
    PERFORM pg_advisory_xact_lock(hashtextextended('marketplace_offerlisting', 0));
  ELSE
    PERFORM pg_advisory_xact_lock_shared(hashtextextended('marketplace_offerlisting', 0));
    PERFORM pg_advisory_xact_lock(hashtextextended('marketplace_offerlisting', s)) FROM unnest(ids) s;
  END IF;
  PERFORM 1 FROM marketplace_offerlisting WHERE server_id = ANY (ids) ORDER BY offer_id FOR UPDATE;

  DELETE FROM marketplace_offerlisting l
   WHERE l.server_id = ANY (ids)
     AND NOT EXISTS (SELECT 1 FROM inventory_offer o
                      WHERE o.id = l.offer_id AND o.server_id = l.server_id AND o.delisted_at IS NULL);

  t := clock_timestamp();
  since := t - win;
  INSERT INTO marketplace_offerlisting AS l (
      offer_id, server_id, offer_org_active, server_online, server_drained, provider_ok, gpu_model_id, region,
      interconnect, currency, available_until, card_hour_price, card_hour_interruptible_price, server_month_price,
      server_month_interruptible_price, pflops_year_price, pflops_year_interruptible_price, offer_created_at,
      server_created_at, free_from_capacity, free_now, ok_cards, free_valid_until, rel_started, rel_failed,
      rel_closed, rel_inside_seconds, rel_straddling, rel_straddling_ends, rel_open_since, rel_as_of,
      rel_valid_until, rel_fixed)
  SELECT o.id, o.server_id, oo.status = 'active', s.status = 'online', s.drained,
         so.status = 'active' AND so.kind IN ('provider', 'both'), s.gpu_model_id, s.region, s.interconnect,
         o.currency, o.available_until, o.card_hour_price, o.card_hour_interruptible_price, o.server_month_price,
         o.server_month_interruptible_price, o.pflops_year_price, o.pflops_year_interruptible_price, o.created_at,
         s.created_at, NOT o.is_resale, CASE WHEN NOT o.is_resale THEN c.free_now END,
         CASE WHEN NOT o.is_resale THEN c.ok_cards END, CASE WHEN NOT o.is_resale THEN c.valid_until END,
         w.started, w.failed, u.closed, u.inside, u.straddling, u.straddling_ends, u.open_since, t,
         least(w.first + win, u.first_inside + win, u.first_end + win, '9999-12-31 00:00:00+00'),
         -- The reliability itself where no part of it moves with the clock (no open outage, none cut by the window's
         -- start, a server older than the window): marketplace.selectors._reliability_of's formula, its terms and
         -- their numeric types as the readers' expression has them, so the number is the same to the last digit.
         CASE WHEN u.open_since IS NULL AND u.straddling = 0 AND t - s.created_at > win THEN
           GREATEST(0.0, ((1.0 - (COALESCE(NULLIF(w.failed, 0), 0.0)
                                  / GREATEST(1.0, (COALESCE(NULLIF(w.started, 0), 0.0)
                                                   + COALESCE(NULLIF(w.failed, 0), 0.0)))))
                          * (1.0 - (COALESCE(CASE WHEN u.closed > 0 THEN u.inside::numeric(30, 6) END, 0.0)
                                    / GREATEST(1.0, LEAST(2592000.0, EXTRACT(EPOCH FROM (t - s.created_at))))))))
         END
    FROM inventory_offer o
    JOIN inventory_server s ON s.id = o.server_id
    JOIN accounts_organization oo ON oo.id = o.organization_id
    JOIN accounts_organization so ON so.id = s.organization_id
    LEFT JOIN scheduler_capacity c ON c.server_id = s.id
    CROSS JOIN LATERAL (
      SELECT count(*) FILTER (WHERE wl.started_at IS NOT NULL) AS started,
             count(*) FILTER (WHERE wl.started_at IS NULL AND le.state = 'failed') AS failed,
             min(wl.created_at) FILTER (WHERE wl.started_at IS NOT NULL OR le.state = 'failed') AS first
        FROM workloads_workload wl
        LEFT JOIN scheduler_lease le ON le.id = wl.lease_id
       WHERE wl.server_id = s.id AND wl.created_at >= since
    ) w
    CROSS JOIN LATERAL (
      SELECT count(*) FILTER (WHERE ou.ended_at IS NOT NULL) AS closed,
             coalesce(sum(extract(epoch FROM ou.ended_at - ou.started_at))
                        FILTER (WHERE ou.ended_at IS NOT NULL AND ou.started_at >= since), 0) AS inside,
             count(*) FILTER (WHERE ou.ended_at IS NOT NULL AND ou.started_at < since) AS straddling,
             coalesce(sum(extract(epoch FROM ou.ended_at))
                        FILTER (WHERE ou.ended_at IS NOT NULL AND ou.started_at < since), 0) AS straddling_ends,
             max(ou.started_at) FILTER (WHERE ou.ended_at IS NULL) AS open_since,
             min(ou.started_at) FILTER (WHERE ou.ended_at IS NOT NULL AND ou.started_at >= since) AS first_inside,
             min(ou.ended_at) FILTER (WHERE ou.ended_at IS NOT NULL AND ou.started_at < since) AS first_end
        FROM inventory_serveroutage ou
       WHERE ou.server_id = s.id AND (ou.ended_at IS NULL OR ou.ended_at > since)
    ) u
   WHERE o.server_id = ANY (ids) AND o.delisted_at IS NULL
  ON CONFLICT (offer_id) DO UPDATE SET
      server_id = excluded.server_id, offer_org_active = excluded.offer_org_active,
      server_online = excluded.server_online, server_drained = excluded.server_drained,
      provider_ok = excluded.provider_ok, gpu_model_id = excluded.gpu_model_id, region = excluded.region,
      interconnect = excluded.interconnect, currency = excluded.currency, available_until = excluded.available_until,
      card_hour_price = excluded.card_hour_price,
      card_hour_interruptible_price = excluded.card_hour_interruptible_price,
      server_month_price = excluded.server_month_price,
      server_month_interruptible_price = excluded.server_month_interruptible_price,
      pflops_year_price = excluded.pflops_year_price,
      pflops_year_interruptible_price = excluded.pflops_year_interruptible_price,
      offer_created_at = excluded.offer_created_at, server_created_at = excluded.server_created_at,
      free_from_capacity = excluded.free_from_capacity,
      free_now = CASE WHEN excluded.free_from_capacity THEN excluded.free_now ELSE l.free_now END,
      ok_cards = CASE WHEN excluded.free_from_capacity THEN excluded.ok_cards ELSE l.ok_cards END,
      free_valid_until = CASE WHEN excluded.free_from_capacity THEN excluded.free_valid_until
                              ELSE l.free_valid_until END,
      rel_started = excluded.rel_started, rel_failed = excluded.rel_failed, rel_closed = excluded.rel_closed,
      rel_inside_seconds = excluded.rel_inside_seconds, rel_straddling = excluded.rel_straddling,
      rel_straddling_ends = excluded.rel_straddling_ends, rel_open_since = excluded.rel_open_since,
      rel_as_of = excluded.rel_as_of, rel_valid_until = excluded.rel_valid_until, rel_fixed = excluded.rel_fixed;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_sync_all() RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  sids bigint[];
BEGIN
  DELETE FROM marketplace_offerlisting l
   WHERE NOT EXISTS (SELECT 1 FROM inventory_offer o WHERE o.id = l.offer_id AND o.delisted_at IS NULL);
  SELECT array_agg(DISTINCT server_id) INTO sids FROM inventory_offer WHERE delisted_at IS NULL;
  PERFORM marketplace_listing_sync(sids);
  RETURN coalesce(cardinality(sids), 0);
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_refresh() RETURNS integer
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
  sids bigint[];
BEGIN
  SELECT array_agg(DISTINCT server_id) INTO sids
    FROM marketplace_offerlisting WHERE rel_valid_until <= clock_timestamp();
  PERFORM marketplace_listing_sync(sids);
  RETURN coalesce(cardinality(sids), 0);
END $$;

-- Statement triggers with transition tables: the servers of the rows a statement wrote.
CREATE OR REPLACE FUNCTION marketplace_listing_on_new_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY(SELECT DISTINCT server_id FROM new_rows));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_old_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY(SELECT DISTINCT server_id FROM old_rows));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_changed_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY(SELECT server_id FROM old_rows UNION SELECT server_id FROM new_rows));
  RETURN NULL;
END $$;

-- Row triggers whose WHEN clause says a copied column changed.
CREATE OR REPLACE FUNCTION marketplace_listing_on_server() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY[NEW.id]);
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_workload() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY[OLD.server_id, NEW.server_id]);
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_lease() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY(SELECT DISTINCT server_id FROM workloads_workload WHERE lease_id = NEW.id));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_organization() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync(ARRAY(
    SELECT id FROM inventory_server WHERE organization_id = NEW.id
    UNION SELECT server_id FROM inventory_offer WHERE organization_id = NEW.id AND delisted_at IS NULL));
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_capacity() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  UPDATE marketplace_offerlisting l
     SET free_now = n.free_now, ok_cards = n.ok_cards, free_valid_until = n.valid_until
    FROM new_rows n
   WHERE l.server_id = n.server_id AND l.free_from_capacity
     AND (l.free_now, l.ok_cards, l.free_valid_until) IS DISTINCT FROM (n.free_now, n.ok_cards, n.valid_until);
  RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION marketplace_listing_on_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
  PERFORM marketplace_listing_sync_all();
  RETURN NULL;
END $$;

CREATE TRIGGER marketplace_listing_offer_insert AFTER INSERT ON inventory_offer
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_new_rows();
CREATE TRIGGER marketplace_listing_offer_update AFTER UPDATE ON inventory_offer
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_changed_rows();
CREATE TRIGGER marketplace_listing_offer_delete AFTER DELETE ON inventory_offer
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_old_rows();
CREATE TRIGGER marketplace_listing_offer_truncate AFTER TRUNCATE ON inventory_offer
  FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_truncate();

-- Agent reports rewrite server rows every few seconds: only a change of a copied column syncs.
CREATE TRIGGER marketplace_listing_server_update
  AFTER UPDATE OF status, drained, region, gpu_model_id, interconnect, organization_id, created_at
  ON inventory_server FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.drained IS DISTINCT FROM NEW.drained
        OR OLD.region IS DISTINCT FROM NEW.region OR OLD.gpu_model_id IS DISTINCT FROM NEW.gpu_model_id
        OR OLD.interconnect IS DISTINCT FROM NEW.interconnect
        OR OLD.organization_id IS DISTINCT FROM NEW.organization_id OR OLD.created_at IS DISTINCT FROM NEW.created_at)
  EXECUTE FUNCTION marketplace_listing_on_server();

CREATE TRIGGER marketplace_listing_organization_update AFTER UPDATE OF status, kind ON accounts_organization
  FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.kind IS DISTINCT FROM NEW.kind)
  EXECUTE FUNCTION marketplace_listing_on_organization();

CREATE TRIGGER marketplace_listing_capacity_insert AFTER INSERT ON scheduler_capacity
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_capacity();
CREATE TRIGGER marketplace_listing_capacity_update AFTER UPDATE ON scheduler_capacity
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_capacity();

-- A new workload counts only once it started or its lease failed; agents rewrite workload rows on every report.
CREATE TRIGGER marketplace_listing_workload_insert AFTER INSERT ON workloads_workload
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_new_rows();
CREATE TRIGGER marketplace_listing_workload_update
  AFTER UPDATE OF server_id, started_at, created_at, lease_id ON workloads_workload FOR EACH ROW
  WHEN (OLD.server_id IS DISTINCT FROM NEW.server_id OR OLD.started_at IS DISTINCT FROM NEW.started_at
        OR OLD.created_at IS DISTINCT FROM NEW.created_at OR OLD.lease_id IS DISTINCT FROM NEW.lease_id)
  EXECUTE FUNCTION marketplace_listing_on_workload();
CREATE TRIGGER marketplace_listing_workload_delete AFTER DELETE ON workloads_workload
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_old_rows();
CREATE TRIGGER marketplace_listing_workload_truncate AFTER TRUNCATE ON workloads_workload
  FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_truncate();

CREATE TRIGGER marketplace_listing_lease_state AFTER UPDATE OF state ON scheduler_lease FOR EACH ROW
  WHEN ((OLD.state = 'failed') IS DISTINCT FROM (NEW.state = 'failed'))
  EXECUTE FUNCTION marketplace_listing_on_lease();

CREATE TRIGGER marketplace_listing_outage_insert AFTER INSERT ON inventory_serveroutage
  REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_new_rows();
CREATE TRIGGER marketplace_listing_outage_update AFTER UPDATE ON inventory_serveroutage
  REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
  FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_changed_rows();
CREATE TRIGGER marketplace_listing_outage_delete AFTER DELETE ON inventory_serveroutage
  REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_old_rows();
CREATE TRIGGER marketplace_listing_outage_truncate AFTER TRUNCATE ON inventory_serveroutage
  FOR EACH STATEMENT EXECUTE FUNCTION marketplace_listing_on_truncate();

SELECT marketplace_listing_sync_all();
"""

DROP_SQL = r"""
DROP TRIGGER IF EXISTS marketplace_listing_offer_insert ON inventory_offer;
DROP TRIGGER IF EXISTS marketplace_listing_offer_update ON inventory_offer;
DROP TRIGGER IF EXISTS marketplace_listing_offer_delete ON inventory_offer;
DROP TRIGGER IF EXISTS marketplace_listing_offer_truncate ON inventory_offer;
DROP TRIGGER IF EXISTS marketplace_listing_server_update ON inventory_server;
DROP TRIGGER IF EXISTS marketplace_listing_organization_update ON accounts_organization;
DROP TRIGGER IF EXISTS marketplace_listing_capacity_insert ON scheduler_capacity;
DROP TRIGGER IF EXISTS marketplace_listing_capacity_update ON scheduler_capacity;
DROP TRIGGER IF EXISTS marketplace_listing_workload_insert ON workloads_workload;
DROP TRIGGER IF EXISTS marketplace_listing_workload_update ON workloads_workload;
DROP TRIGGER IF EXISTS marketplace_listing_workload_delete ON workloads_workload;
DROP TRIGGER IF EXISTS marketplace_listing_workload_truncate ON workloads_workload;
DROP TRIGGER IF EXISTS marketplace_listing_lease_state ON scheduler_lease;
DROP TRIGGER IF EXISTS marketplace_listing_outage_insert ON inventory_serveroutage;
DROP TRIGGER IF EXISTS marketplace_listing_outage_update ON inventory_serveroutage;
DROP TRIGGER IF EXISTS marketplace_listing_outage_delete ON inventory_serveroutage;
DROP TRIGGER IF EXISTS marketplace_listing_outage_truncate ON inventory_serveroutage;
DROP FUNCTION IF EXISTS marketplace_listing_on_truncate();
DROP FUNCTION IF EXISTS marketplace_listing_on_capacity();
DROP FUNCTION IF EXISTS marketplace_listing_on_organization();
DROP FUNCTION IF EXISTS marketplace_listing_on_lease();
DROP FUNCTION IF EXISTS marketplace_listing_on_workload();
DROP FUNCTION IF EXISTS marketplace_listing_on_server();
DROP FUNCTION IF EXISTS marketplace_listing_on_changed_rows();
DROP FUNCTION IF EXISTS marketplace_listing_on_old_rows();
DROP FUNCTION IF EXISTS marketplace_listing_on_new_rows();
DROP FUNCTION IF EXISTS marketplace_listing_refresh();
DROP FUNCTION IF EXISTS marketplace_listing_sync_all();
DROP FUNCTION IF EXISTS marketplace_listing_sync(bigint[]);
"""
