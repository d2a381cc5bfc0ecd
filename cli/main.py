"""The `suanli` entry point: the command group with every command module attached, run so that the API's errors,
bad queries and usage mistakes end in the documented exit codes."""

from __future__ import annotations

from cli import account, customer, elastic, provider, staff  # noqa: F401  (they attach their commands to the group)
from cli.app import cli, handles_errors


@handles_errors
def _run() -> None:
    cli.main(prog_name="suanli")


def main() -> None:
    _run()


if __name__ == "__main__":
    main()
