"""The balance ledger never changes: PostgreSQL refuses UPDATE and DELETE of an entry (a correction is another
entry). And every organisation that existed before balances keeps paying as it did, by the monthly invoice with no
credit limit (postpaid terms, set by nobody); organisations made from now on get the site's default
(SUANLI_DEFAULT_PAYMENT_MODE)."""

from django.db import migrations

SQL = """
CREATE FUNCTION billing_balanceentry_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'balance entries never change; record another entry instead'
        USING ERRCODE = 'integrity_constraint_violation';
END $$;

CREATE TRIGGER billing_balanceentry_immutable BEFORE UPDATE OR DELETE ON billing_balanceentry
    FOR EACH ROW EXECUTE FUNCTION billing_balanceentry_immutable();
"""

REVERSE = """
DROP TRIGGER billing_balanceentry_immutable ON billing_balanceentry;
DROP FUNCTION billing_balanceentry_immutable();
"""


def existing_postpaid(apps, schema_editor):
    Organization = apps.get_model("accounts", "Organization")
    BillingTerms = apps.get_model("billing", "BillingTerms")
    BillingTerms.objects.bulk_create(
        BillingTerms(organization_id=pk, mode="postpaid", credit_limit=None, currency=currency)
        for pk, currency in Organization.objects.values_list("pk", "currency")
    )


class Migration(migrations.Migration):
    dependencies = [("billing", "0004_balances")]

    operations = [
        migrations.RunSQL(SQL, REVERSE),
        migrations.RunPython(existing_postpaid, migrations.RunPython.noop),
    ]
