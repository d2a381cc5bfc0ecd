"""A finalised invoice (any state but draft) and its lines never change: PostgreSQL refuses it.

Only the fields of its life after issue may move: state (open -> paid/void), paid_at, due_at, overdue, refunded.
Corrections are credit notes.
"""

from django.db import migrations

SQL = """
CREATE FUNCTION billing_invoice_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        IF OLD.state <> 'draft' THEN
            RAISE EXCEPTION 'invoice % is finalised and cannot be deleted', OLD.number
            USING ERRCODE = 'integrity_constraint_violation';
        END IF;
        RETURN OLD;
    END IF;
    IF OLD.state <> 'draft' AND (
        NEW.organization_id, NEW.period, NEW.number, NEW.currency, NEW.subtotal, NEW.credits, NEW.tax_rate, NEW.tax,
        NEW.total, NEW.issued_at
    ) IS DISTINCT FROM (
        OLD.organization_id, OLD.period, OLD.number, OLD.currency, OLD.subtotal, OLD.credits, OLD.tax_rate, OLD.tax,
        OLD.total, OLD.issued_at
    ) THEN
        RAISE EXCEPTION 'invoice % is finalised; issue a credit note instead', OLD.number
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF OLD.state <> 'draft' AND NEW.state = 'draft' THEN
        RAISE EXCEPTION 'invoice % is finalised and cannot return to draft', OLD.number
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER billing_invoice_immutable BEFORE UPDATE OR DELETE ON billing_invoice
    FOR EACH ROW EXECUTE FUNCTION billing_invoice_immutable();

CREATE FUNCTION billing_invoiceline_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    invoice_state text;
BEGIN
    SELECT state INTO invoice_state FROM billing_invoice
        WHERE id = CASE WHEN TG_OP = 'DELETE' THEN OLD.invoice_id ELSE NEW.invoice_id END;
    IF TG_OP = 'UPDATE' AND NEW.invoice_id <> OLD.invoice_id THEN
        RAISE EXCEPTION 'an invoice line cannot move'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    IF invoice_state <> 'draft' THEN
        RAISE EXCEPTION 'the lines of a finalised invoice never change'
            USING ERRCODE = 'integrity_constraint_violation';
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;

CREATE TRIGGER billing_invoiceline_immutable BEFORE INSERT OR UPDATE OR DELETE ON billing_invoiceline
    FOR EACH ROW EXECUTE FUNCTION billing_invoiceline_immutable();
"""

REVERSE = """
DROP TRIGGER billing_invoiceline_immutable ON billing_invoiceline;
DROP FUNCTION billing_invoiceline_immutable();
DROP TRIGGER billing_invoice_immutable ON billing_invoice;
DROP FUNCTION billing_invoice_immutable();
"""


class Migration(migrations.Migration):
    dependencies = [("billing", "0001_usage_invoices_payments_payouts")]

    operations = [migrations.RunSQL(SQL, REVERSE)]
