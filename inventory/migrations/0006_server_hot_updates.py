"""Room for HOT updates on the rows every agent report rewrites.

Each report updates its server row (last_seq, last_seen_at) and its cards' rows (last sample, health state). The
(status, last_seen_at) index made every server update a non-HOT one (a new entry in each of the table's indexes);
it goes. A fill factor below 100 leaves room on each page, so the new version of a row stays on its page and its
dead one is pruned there, without index entries or a vacuum (pages written from now on; existing pages get the
room when the table is rewritten).
"""

from django.db import migrations

FILLFACTOR = 70


class Migration(migrations.Migration):
    dependencies = [
        ("inventory", "0005_offer_serveroutage"),
    ]

    operations = [
        migrations.RemoveIndex(
            model_name="server",
            name="inventory_s_status_c3f1a4_idx",
        ),
        migrations.RunSQL(
            sql=[
                f"ALTER TABLE inventory_server SET (fillfactor = {FILLFACTOR})",
                f"ALTER TABLE inventory_gpu SET (fillfactor = {FILLFACTOR})",
            ],
            reverse_sql=[
                "ALTER TABLE inventory_server RESET (fillfactor)",
                "ALTER TABLE inventory_gpu RESET (fillfactor)",
            ],
        ),
    ]
