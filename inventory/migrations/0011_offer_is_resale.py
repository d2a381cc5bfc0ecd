# Resale offers (issue 20): a reseller's offer of cards it holds on a server does not count against the server's
# one live offer (the provider's).

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0004_org_events"),
        ("inventory", "0010_data_access"),
    ]

    operations = [
        migrations.AddField(
            model_name="offer",
            name="is_resale",
            field=models.BooleanField(default=False),
        ),
        migrations.RemoveConstraint(
            model_name="offer",
            name="offer_one_live",
        ),
        migrations.AddConstraint(
            model_name="offer",
            constraint=models.UniqueConstraint(
                condition=models.Q(("delisted_at__isnull", True), ("is_resale", False)),
                fields=("server",),
                name="offer_one_live",
            ),
        ),
    ]
