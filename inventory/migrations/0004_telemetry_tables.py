from django.db import migrations

from inventory import telemetry


def create_partitions(apps, schema_editor):
    telemetry.ensure_partitions()


class Migration(migrations.Migration):
    """Raw GPU samples in daily RANGE partitions plus roll-up tables (see inventory/telemetry.py)."""

    dependencies = [("inventory", "0003_agent_credentials_health_state_and_events")]

    operations = [
        migrations.RunSQL(telemetry.CREATE_SQL, telemetry.DROP_SQL),
        migrations.RunPython(create_partitions, migrations.RunPython.noop),
    ]
