"""`suanli`: the command line for Suanli's customers, providers and staff.

A standalone client of the public API (docs/API.md) that never imports Django or the platform's apps, like the
host agent in agents/: click for the commands, rich for tables and progress, requests for HTTP and platformdirs
for the config directory."""

__version__ = "0.1.0"
