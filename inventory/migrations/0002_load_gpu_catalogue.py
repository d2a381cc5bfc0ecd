"""Load the GPU catalogue (inventory/fixtures/gpu_models.json) so every database has it.

Keyed on slug with update_or_create, so rerunning it (or a later migration calling the same loader after the
fixture changes) only brings figures up to date.
"""

from django.db import migrations


def load(apps, schema_editor):
    from inventory.catalogue import catalogue_load

    catalogue_load(model=apps.get_model("inventory", "GpuModel"))


class Migration(migrations.Migration):
    dependencies = [
        ("inventory", "0001_initial"),
    ]

    operations = [
        migrations.RunPython(load, migrations.RunPython.noop),
    ]
