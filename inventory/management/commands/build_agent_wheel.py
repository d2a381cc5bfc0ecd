"""`manage.py build_agent_wheel [DIR]`: write the host agent's wheel (the one the site serves at /agent/, built by
inventory/agent_package.py) into DIR (default: dist/) and print its name and SHA-256, for a release or a mirror."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand

from inventory.agent_package import build


class Command(BaseCommand):
    help = "Write the host agent's wheel (as served at /agent/) into a folder and print its SHA-256."

    def add_arguments(self, parser):
        parser.add_argument("folder", nargs="?", default="dist", help="where to write it (default: dist/)")

    def handle(self, *args, folder: str, **options):
        wheel = build()
        target = Path(folder)
        target.mkdir(parents=True, exist_ok=True)
        path = target / wheel.filename
        path.write_bytes(wheel.content)
        self.stdout.write(f"{path}  sha256={wheel.sha256}")
