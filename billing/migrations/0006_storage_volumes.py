"""Storage is billed (issue 16): StorageRecord (a volume's seconds per hour slot, rated per GB-month), invoice
lines for a volume (lease nullable, volume set, plan `storage`: exactly one of the two, checked), and VolumeNotice
(the grace-period e-mails, once each). The invoice-line immutability trigger of 0002 reads only the invoice's state,
so it holds for storage lines as it is."""

import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("accounts", "0002_billing_hold"),
        ("billing", "0005_ledger_immutable_existing_postpaid"),
        ("inventory", "0008_volumes"),
        ("scheduler", "0005_lease_end_reason"),
        ("workloads", "0003_volumes"),
    ]

    operations = [
        migrations.CreateModel(
            name="StorageRecord",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("slot_start", models.DateTimeField()),
                ("start", models.DateTimeField()),
                ("end", models.DateTimeField()),
                ("seconds", models.DecimalField(decimal_places=6, max_digits=18)),
                ("size_gb", models.PositiveIntegerField()),
                ("unit_price", models.DecimalField(decimal_places=6, help_text="Per GB-month", max_digits=20)),
                ("currency", models.CharField(choices=[("CNY", "CNY"), ("USD", "USD")], max_length=3)),
                ("quantity", models.DecimalField(decimal_places=12, help_text="GB-months", max_digits=30)),
                ("amount", models.DecimalField(decimal_places=12, max_digits=30)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
            ],
            options={
                "ordering": ["id"],
            },
        ),
        migrations.CreateModel(
            name="VolumeNotice",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                (
                    "kind",
                    models.CharField(
                        choices=[
                            ("grace", "Volume kept for a grace period"),
                            ("days_3", "Volume wiped in 3 days"),
                            ("days_1", "Volume wiped in 1 day"),
                            ("wiping", "Volume being wiped"),
                        ],
                        max_length=8,
                    ),
                ),
                ("wipe_at", models.DateTimeField()),
                ("created_at", models.DateTimeField()),
            ],
            options={
                "ordering": ["-created_at", "-id"],
            },
        ),
        migrations.AddField(
            model_name="invoiceline",
            name="volume",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="workloads.volume",
            ),
        ),
        migrations.AlterField(
            model_name="invoiceline",
            name="lease",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="+",
                to="scheduler.lease",
            ),
        ),
        migrations.AlterField(
            model_name="invoiceline",
            name="plan",
            field=models.CharField(
                choices=[
                    ("card_hour", "Per card-hour"),
                    ("server_month", "Per server-month"),
                    ("pflops_year", "Per PFLOPS-year"),
                    ("storage", "Storage"),
                ],
                max_length=16,
            ),
        ),
        migrations.AddConstraint(
            model_name="invoiceline",
            constraint=models.UniqueConstraint(
                fields=("invoice", "volume", "unit_price"), name="invoiceline_volume_unique"
            ),
        ),
        migrations.AddConstraint(
            model_name="invoiceline",
            constraint=models.CheckConstraint(
                condition=models.Q(
                    models.Q(
                        ("lease__isnull", False),
                        ("plan__in", ["card_hour", "server_month", "pflops_year"]),
                        ("volume__isnull", True),
                    ),
                    models.Q(
                        ("lease__isnull", True), ("plan", "storage"), ("sla_credit", 0), ("volume__isnull", False)
                    ),
                    _connector="OR",
                ),
                name="invoiceline_lease_or_volume",
            ),
        ),
        migrations.AddField(
            model_name="storagerecord",
            name="organization",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="storage_usage", to="accounts.organization"
            ),
        ),
        migrations.AddField(
            model_name="storagerecord",
            name="provider",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="provided_storage", to="accounts.organization"
            ),
        ),
        migrations.AddField(
            model_name="storagerecord",
            name="server",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="+", to="inventory.server"
            ),
        ),
        migrations.AddField(
            model_name="storagerecord",
            name="volume",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="storage_usage", to="workloads.volume"
            ),
        ),
        migrations.AddField(
            model_name="volumenotice",
            name="organization",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="volume_notices", to="accounts.organization"
            ),
        ),
        migrations.AddField(
            model_name="volumenotice",
            name="volume",
            field=models.ForeignKey(
                on_delete=django.db.models.deletion.PROTECT, related_name="notices", to="workloads.volume"
            ),
        ),
        migrations.AddIndex(
            model_name="storagerecord",
            index=models.Index(fields=["organization", "slot_start"], name="storage_org_slot"),
        ),
        migrations.AddIndex(
            model_name="storagerecord",
            index=models.Index(fields=["provider", "slot_start"], name="storage_provider_slot"),
        ),
        migrations.AddIndex(
            model_name="storagerecord",
            index=models.Index(fields=["volume", "slot_start"], name="storage_volume_slot"),
        ),
        migrations.AddIndex(
            model_name="storagerecord",
            index=models.Index(fields=["slot_start"], name="storage_slot"),
        ),
        migrations.AddConstraint(
            model_name="storagerecord",
            constraint=models.UniqueConstraint(fields=("volume", "slot_start"), name="storage_once_per_slot"),
        ),
        migrations.AddConstraint(
            model_name="storagerecord",
            constraint=models.CheckConstraint(
                condition=models.Q(("end__gt", models.F("start"))), name="storage_end_after_start"
            ),
        ),
        migrations.AddConstraint(
            model_name="storagerecord",
            constraint=models.CheckConstraint(
                condition=models.Q(("amount__gte", 0)), name="storage_amount_not_negative"
            ),
        ),
        migrations.AddConstraint(
            model_name="volumenotice",
            constraint=models.UniqueConstraint(fields=("volume", "kind", "wipe_at"), name="volume_notice_once"),
        ),
        migrations.AddConstraint(
            model_name="volumenotice",
            constraint=models.CheckConstraint(
                condition=models.Q(("kind__in", ["grace", "days_3", "days_1", "wiping"])),
                name="volume_notice_kind_valid",
            ),
        ),
    ]
