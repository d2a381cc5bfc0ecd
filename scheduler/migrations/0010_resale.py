# Resale (issue 20): resale offers backed by a reseller's own contract (Resale), resale allocations inside their
# backing allocations (Allocation.backing, layer 1, the exclusion constraint per layer, the containment trigger in
# scheduler/resale_sql.py), and capacity counts that read layer 0 only (scheduler/capacity_sql.py RECOUNT_SQL).

import django.contrib.postgres.constraints
import django.db.models.deletion
from django.db import migrations, models

from scheduler import capacity_sql, resale_sql


class Migration(migrations.Migration):
    dependencies = [
        ("inventory", "0011_offer_is_resale"),
        ("scheduler", "0009_scaling_rule"),
    ]

    operations = [
        migrations.CreateModel(
            name="Resale",
            fields=[
                (
                    "offer",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.PROTECT,
                        primary_key=True,
                        related_name="resale",
                        serialize=False,
                        to="inventory.offer",
                    ),
                ),
                ("interruptible_only", models.BooleanField(default=False)),
                ("created_at", models.DateTimeField(auto_now_add=True)),
                (
                    "lease",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT, related_name="resales", to="scheduler.lease"
                    ),
                ),
            ],
            options={"ordering": ["offer"]},
        ),
        migrations.AddField(
            model_name="allocation",
            name="backing",
            field=models.ForeignKey(
                blank=True,
                null=True,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="resold_as",
                to="scheduler.allocation",
            ),
        ),
        migrations.AddField(
            model_name="allocation",
            name="layer",
            field=models.GeneratedField(
                db_persist=True,
                expression=models.Case(
                    models.When(backing__isnull=False, then=models.Value(1)), default=models.Value(0)
                ),
                output_field=models.SmallIntegerField(),
            ),
        ),
        migrations.RemoveConstraint(
            model_name="allocation",
            name="allocation_no_overlap_per_gpu",
        ),
        migrations.AddConstraint(
            model_name="allocation",
            constraint=django.contrib.postgres.constraints.ExclusionConstraint(
                expressions=[("gpu", "="), ("layer", "="), ("period", "&&")], name="allocation_no_overlap_per_gpu"
            ),
        ),
        migrations.RunSQL(resale_sql.CREATE_SQL, resale_sql.DROP_SQL),
        migrations.RunSQL(capacity_sql.RECOUNT_SQL, capacity_sql.RECOUNT_V1_SQL),
    ]
