"""`python -m cli`: the same as the `suanli` command."""

from cli.main import main

main()
