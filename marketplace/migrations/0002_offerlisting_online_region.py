# The region filter's choices (marketplace.search_page.listed_regions) skip along this index: one probe per region
# instead of reading every listing row (issue 18). Partial, on the rows those choices count (online servers).

from django.db import migrations


class Migration(migrations.Migration):
    dependencies = [("marketplace", "0001_offerlisting")]

    operations = [
        migrations.RunSQL(
            "CREATE INDEX IF NOT EXISTS offerlisting_online_region ON marketplace_offerlisting (region) "
            "WHERE server_online",
            reverse_sql="DROP INDEX IF EXISTS offerlisting_online_region",
        )
    ]
