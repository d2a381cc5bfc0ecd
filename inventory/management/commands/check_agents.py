"""`manage.py check_agents`: servers whose agent went silent become unreachable (beat: inventory.check_agents)."""

from django.core.management.base import BaseCommand

from inventory import services


class Command(BaseCommand):
    help = (
        "Mark online servers whose agent has been silent for SUANLI_AGENT_SILENT_INTERVALS x "
        "SUANLI_AGENT_INTERVAL_SECONDS as unreachable (the Celery beat job inventory.check_agents runs the same)."
    )

    def handle(self, *args, **options) -> None:
        changed = services.servers_mark_unreachable()
        self.stdout.write(f"{changed} server(s) marked unreachable.")
