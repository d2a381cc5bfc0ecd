"""A fake Stripe Connect for the payout tests: `POST /v1/transfers` (and reads of transfers) on loopback HTTP.

localstripe (tests/billing/conftest.py) has no Connect transfers, so this small `http.server` in a thread answers
them the way Stripe documents: form-encoded parameters in, a Stripe-shaped `transfer` object out, amounts in minor
units; a repeated Idempotency-Key with the same request replays the first answer (header `Idempotent-Replayed`),
with another request it is refused (400 `idempotency_error`). Destinations in `refuse` are answered as Stripe
answers an account that cannot receive transfers; `fail_after_create` answers 500 after making the transfer (a
lost answer, which the SDK retries under the same key). Anything else is forwarded to `upstream` when one is set
(localstripe), so one STRIPE_API_BASE serves a test that pays invoices and sends payouts.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl


@dataclass
class SentTransfer:
    params: dict[str, str]
    idempotency_key: str | None


@dataclass
class FakeConnect:
    url: str = ""
    upstream: str = ""
    transfers: dict[str, dict[str, Any]] = field(default_factory=dict)
    sent: list[SentTransfer] = field(default_factory=list)
    replies: dict[tuple[str, str], tuple[bytes, int, bytes]] = field(default_factory=dict)
    refuse: set[str] = field(default_factory=set)
    fail_after_create: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def reset(self) -> None:
        with self.lock:
            self.upstream = ""
            self.transfers.clear()
            self.sent.clear()
            self.replies.clear()
            self.refuse.clear()
            self.fail_after_create = 0

    # --- the endpoints ---------------------------------------------------------------------------------

    def transfer_create(self, body: bytes, auth: str, key: str | None) -> tuple[int, dict[str, Any], dict[str, str]]:
        params = dict(parse_qsl(body.decode(), keep_blank_values=True))
        with self.lock:
            self.sent.append(SentTransfer(params, key))
            if key and (auth, key) in self.replies:
                first, status, payload = self.replies[(auth, key)]
                if first != body:
                    return _error(400, "idempotency_error", "Keys for idempotent requests can only be used with the "
                                  "same parameters they were first used with.")  # fmt: skip
                return status, json.loads(payload), {"Idempotent-Replayed": "true"}
            try:
                amount = int(params["amount"])
                currency = params["currency"]
                destination = params["destination"]
            except (KeyError, ValueError):
                return _error(400, "parameter_missing", "Missing required param: amount, currency or destination.")
            if amount <= 0 or not destination.startswith("acct_"):
                return _error(400, "parameter_invalid", "Invalid amount or destination.")
            if destination in self.refuse:
                status, obj, headers = _error(
                    400,
                    "insufficient_capabilities_for_transfer",
                    "Your destination account needs to have at least one of the following capabilities enabled: "
                    "transfers, crypto_transfers, legacy_payments",
                )
            else:
                transfer_id = f"tr_{secrets.token_hex(12)}"
                metadata = {k[len("metadata[") : -1]: v for k, v in params.items() if k.startswith("metadata[")}
                obj = {
                    "id": transfer_id,
                    "object": "transfer",
                    "amount": amount,
                    "amount_reversed": 0,
                    "balance_transaction": f"txn_{secrets.token_hex(12)}",
                    "created": int(time.time()),
                    "currency": currency.lower(),
                    "description": params.get("description"),
                    "destination": destination,
                    "destination_payment": f"py_{secrets.token_hex(12)}",
                    "livemode": False,
                    "metadata": metadata,
                    "reversals": {"object": "list", "data": [], "has_more": False, "url": ""},
                    "reversed": False,
                    "source_transaction": None,
                    "source_type": "card",
                    "transfer_group": params.get("transfer_group"),
                }
                self.transfers[transfer_id] = obj
                status, headers = 200, {}
            if key:
                self.replies[(auth, key)] = (body, status, json.dumps(obj).encode())
            if status == 200 and self.fail_after_create > 0:
                self.fail_after_create -= 1
                return (
                    500,
                    {"error": {"type": "api_error", "message": "An unknown error occurred."}},
                    {"Stripe-Should-Retry": "true"},
                )
            return status, obj, headers

    def transfer_get(self, transfer_id: str) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            obj = self.transfers.get(transfer_id)
        if obj is None:
            return _error(404, "resource_missing", f"No such transfer: '{transfer_id}'")
        return 200, obj, {}

    def transfer_list(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        with self.lock:
            data = sorted(self.transfers.values(), key=lambda t: t["created"], reverse=True)
        return 200, {"object": "list", "data": data, "has_more": False, "url": "/v1/transfers"}, {}

    def posts(self) -> list[SentTransfer]:
        with self.lock:
            return list(self.sent)


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    error_type = "idempotency_error" if code == "idempotency_error" else "invalid_request_error"
    return status, {"error": {"type": error_type, "code": code, "message": message}}, {}


def _handler(fake: FakeConnect) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            pass

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self, status: int, obj: dict[str, Any], headers: dict[str, str]) -> None:
            payload = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.send_header("Request-Id", f"req_{secrets.token_hex(7)}")
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def _route(self, method: str) -> None:
            body = self._body() if method == "POST" else b""
            auth = self.headers.get("Authorization", "")
            path = self.path.split("?", 1)[0].rstrip("/")
            if path == "/v1/transfers" or path.startswith("/v1/transfers/"):
                if not auth.startswith("Bearer sk_"):
                    return self._answer(*_error(401, "api_key_missing", "You did not provide an API key."))
                if method == "POST" and path == "/v1/transfers":
                    return self._answer(*fake.transfer_create(body, auth, self.headers.get("Idempotency-Key")))
                if method == "GET" and path == "/v1/transfers":
                    return self._answer(*fake.transfer_list())
                if method == "GET":
                    return self._answer(*fake.transfer_get(path.rsplit("/", 1)[1]))
                return self._answer(*_error(404, "resource_missing", "Unrecognized request URL."))
            if not fake.upstream:
                return self._answer(*_error(404, "resource_missing", f"Unrecognized request URL ({method}: {path})."))
            self._forward(method, body)

        def _forward(self, method: str, body: bytes) -> None:
            skip = {"host", "content-length", "connection", "accept-encoding"}
            headers = {k: v for k, v in self.headers.items() if k.lower() not in skip}
            request = urllib.request.Request(  # noqa: S310 - loopback only
                fake.upstream + self.path, data=body if method == "POST" else None, headers=headers, method=method
            )
            try:
                with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310
                    status, payload, reply_headers = response.status, response.read(), response.headers
            except urllib.error.HTTPError as exc:
                status, payload, reply_headers = exc.code, exc.read(), exc.headers
            self.send_response(status)
            self.send_header("Content-Type", reply_headers.get("Content-Type", "application/json"))
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler


@contextmanager
def running() -> Iterator[FakeConnect]:
    """A FakeConnect served on 127.0.0.1 (a free port) until the block ends."""
    fake = FakeConnect()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, name="fake-connect", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
