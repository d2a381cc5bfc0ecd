# The agent-report fixtures (tests/support/agent_reports.py): `h100`, `registered` and `agent`.
from tests.support.agent_reports import agent, h100, registered  # noqa: F401
