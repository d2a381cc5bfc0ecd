"""Resale's database rule (migration scheduler/0010_resale): a resale allocation lies inside its backing allocation.

An allocation with `backing` set (layer 1, a lease on a resale offer) must be on the same card as the allocation it
points at, that allocation must be an ordinary one (layer 0: no resale of a resale), and its period must contain the
resale's. A constraint trigger checks it for every inserted or updated allocation: a resale row against its backing
row, and a layer-0 row whose card or period changed against every resale of it, so closing a backing allocation
without first closing its resales fails too. It is `DEFERRABLE INITIALLY IMMEDIATE`: it runs at the end of each
statement unless a transaction defers it (`SET CONSTRAINTS ALL DEFERRED`). The
exclusion constraint (`allocation_no_overlap_per_gpu`, per layer) keeps two resales of one card apart.
"""

CREATE_SQL = r"""
CREATE OR REPLACE FUNCTION scheduler_allocation_resale_check() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
  b record;
  cur record;
BEGIN
  -- The row as it is now (a deferred check sees the transaction's last word, not the row the event saw).
  SELECT id, gpu_id, period, backing_id INTO cur FROM scheduler_allocation WHERE id = NEW.id;
  IF NOT FOUND THEN
    RETURN NULL;
  END IF;
  IF cur.backing_id IS NOT NULL THEN
    SELECT gpu_id, period, backing_id INTO b FROM scheduler_allocation WHERE id = cur.backing_id;
    IF NOT FOUND OR b.backing_id IS NOT NULL OR b.gpu_id <> cur.gpu_id OR NOT (b.period @> cur.period) THEN
      RAISE EXCEPTION 'allocation % is not inside its backing allocation %', cur.id, cur.backing_id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_resale_within_backing';
    END IF;
  ELSIF TG_OP = 'UPDATE' AND (OLD.period IS DISTINCT FROM NEW.period OR OLD.gpu_id IS DISTINCT FROM NEW.gpu_id) THEN
    IF EXISTS (
      SELECT 1 FROM scheduler_allocation r
       WHERE r.backing_id = cur.id AND (r.gpu_id <> cur.gpu_id OR NOT (cur.period @> r.period))
    ) THEN
      RAISE EXCEPTION 'allocation % no longer contains its resales', cur.id
        USING ERRCODE = 'check_violation', CONSTRAINT = 'allocation_resale_within_backing';
    END IF;
  END IF;
  RETURN NULL;
END $$;

-- Ordinary inserts (the usual case) skip it; an update checks a resale row, or a row whose card or period moved.
CREATE CONSTRAINT TRIGGER allocation_resale_within_backing
  AFTER INSERT ON scheduler_allocation
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW WHEN (NEW.backing_id IS NOT NULL) EXECUTE FUNCTION scheduler_allocation_resale_check();
CREATE CONSTRAINT TRIGGER allocation_resale_within_backing_update
  AFTER UPDATE OF gpu_id, period, backing_id ON scheduler_allocation
  DEFERRABLE INITIALLY IMMEDIATE
  FOR EACH ROW WHEN (NEW.backing_id IS NOT NULL OR OLD.period IS DISTINCT FROM NEW.period
                     OR OLD.gpu_id IS DISTINCT FROM NEW.gpu_id)
  EXECUTE FUNCTION scheduler_allocation_resale_check();
"""

DROP_SQL = r"""
DROP TRIGGER IF EXISTS allocation_resale_within_backing ON scheduler_allocation;
DROP TRIGGER IF EXISTS allocation_resale_within_backing_update ON scheduler_allocation;
DROP FUNCTION IF EXISTS scheduler_allocation_resale_check();
"""
