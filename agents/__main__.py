"""`python -m agents` is `suanli-agent`."""

from agents.cli import main

raise SystemExit(main())
