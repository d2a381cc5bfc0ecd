"""Request signing for agent reports, as API.md ("Agent") specifies it. Nothing else lives here.

    signature = hex(HMAC-SHA256(key=agent_secret, msg=f"{timestamp}.".encode() + raw_body))

sent with the headers `X-Agent-Id`, `X-Agent-Timestamp` (unix seconds, as a decimal string) and `X-Agent-Signature`.
The platform re-implements verification on its side (it imports nothing from `agents`): it recomputes the HMAC over
the exact bytes received, compares in constant time, and refuses a timestamp more than 300 s from its clock. A report
is therefore signed when it is sent, not when it is built, so a report spooled through an outage is not stale.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER_ID = "X-Agent-Id"
HEADER_TIMESTAMP = "X-Agent-Timestamp"
HEADER_SIGNATURE = "X-Agent-Signature"


def sign(secret: str | bytes, timestamp: int, body: bytes) -> str:
    """The hex HMAC-SHA256 of `b"<timestamp>." + body` keyed by `secret`."""
    key = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(key, f"{int(timestamp)}.".encode() + body, hashlib.sha256).hexdigest()


def headers(agent_id: str, secret: str | bytes, body: bytes, timestamp: int | None = None) -> dict[str, str]:
    """The three signing headers for `body`, timestamped now unless told otherwise."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    return {HEADER_ID: str(agent_id), HEADER_TIMESTAMP: str(ts), HEADER_SIGNATURE: sign(secret, ts, body)}
