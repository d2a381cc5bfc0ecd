# The offer listing (issue 18): one search row per live offer, kept by triggers (marketplace/listing_sql.py).

import django.db.models.deletion
from django.db import migrations, models

import marketplace.models

from marketplace import listing_sql


class Migration(migrations.Migration):
    initial = True

    dependencies = [
        ("accounts", "0004_org_events"),
        ("inventory", "0011_offer_is_resale"),
        ("scheduler", "0010_resale"),
        ("workloads", "0008_workload_logs"),
    ]

    operations = [
        migrations.CreateModel(
            name="OfferListing",
            fields=[
                (
                    "offer",
                    models.OneToOneField(
                        db_constraint=False,
                        on_delete=django.db.models.deletion.DO_NOTHING,
                        primary_key=True,
                        related_name="listing",
                        serialize=False,
                        to="inventory.offer",
                    ),
                ),
                ("server_id", models.BigIntegerField()),
                ("offer_org_active", models.BooleanField()),
                ("server_online", models.BooleanField()),
                ("server_drained", models.BooleanField()),
                ("provider_ok", models.BooleanField()),
                ("gpu_model_id", models.BigIntegerField()),
                ("region", models.CharField(max_length=50)),
                ("interconnect", models.CharField(blank=True, max_length=20)),
                ("currency", models.CharField(max_length=3)),
                ("available_until", models.DateTimeField(null=True)),
                ("card_hour_price", models.DecimalField(decimal_places=4, max_digits=14, null=True)),
                ("card_hour_interruptible_price", models.DecimalField(decimal_places=4, max_digits=14, null=True)),
                ("server_month_price", models.DecimalField(decimal_places=4, max_digits=14, null=True)),
                ("server_month_interruptible_price", models.DecimalField(decimal_places=4, max_digits=14, null=True)),
                ("pflops_year_price", models.DecimalField(decimal_places=4, max_digits=14, null=True)),
                ("pflops_year_interruptible_price", models.DecimalField(decimal_places=4, max_digits=14, null=True)),
                ("offer_created_at", models.DateTimeField()),
                ("server_created_at", models.DateTimeField()),
                ("free_from_capacity", models.BooleanField(default=True)),
                ("free_now", models.IntegerField(null=True)),
                ("ok_cards", models.IntegerField(null=True)),
                ("free_valid_until", models.DateTimeField(null=True)),
                ("rel_started", models.IntegerField(default=0)),
                ("rel_failed", models.IntegerField(default=0)),
                ("rel_closed", models.IntegerField(default=0)),
                ("rel_inside_seconds", models.DecimalField(decimal_places=6, default=0, max_digits=30)),
                ("rel_straddling", models.IntegerField(default=0)),
                ("rel_straddling_ends", models.DecimalField(decimal_places=6, default=0, max_digits=30)),
                ("rel_open_since", models.DateTimeField(null=True)),
                ("rel_as_of", models.DateTimeField()),
                ("rel_valid_until", models.DateTimeField()),
                ("rel_fixed", marketplace.models.ExactNumeric(decimal_places=50, max_digits=100, null=True)),
            ],
            options={
                "indexes": [models.Index(fields=["server_id"], name="offerlisting_server")],
            },
        ),
        migrations.RunSQL(listing_sql.CREATE_SQL, listing_sql.DROP_SQL),
    ]
