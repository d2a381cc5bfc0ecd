"""A fake Stripe on loopback for the payment tests: `localstripe` (PyPI), served over real HTTP in a thread.

A plugin of the whole suite (tests/conftest.py's pytest_plugins), so that one session has one localstripe whichever
folders use it: its aiohttp app can be started once per process (a second start finds its middleware list frozen).

The `stripe` SDK under test talks to it through STRIPE_API_BASE, exactly as it talks to Stripe. localstripe has no
Idempotency-Key support, so a small middleware in front of it keeps Stripe's documented behaviour: a repeated key
with the same request replays the first answer; with another request it is refused (400 idempotency_error). The
same middleware records each request, so a test can see what was sent.
"""

from __future__ import annotations

import asyncio
import threading
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl

import pytest
import requests
from aiohttp import web

SECRET_KEY = "sk_test_suanli"
PUBLISHABLE_KEY = "pk_test_suanli"
WEBHOOK_SECRET = "whsec_test_suanli"


@dataclass
class SentRequest:
    method: str
    path: str
    params: dict[str, str]
    idempotency_key: str | None


@dataclass
class FakeStripe:
    """The running localstripe: its base URL and every request it has answered since the test began."""

    url: str
    sent: list[SentRequest] = field(default_factory=list)
    replies: dict[tuple[str, str], tuple[tuple[str, bytes], int, bytes]] = field(default_factory=dict)

    def get(self, path: str, **params: Any) -> dict[str, Any]:
        response = requests.get(f"{self.url}{path}", params=params, auth=(SECRET_KEY, ""), timeout=10)
        response.raise_for_status()
        return response.json()

    def posts(self, path: str) -> list[SentRequest]:
        return [r for r in self.sent if r.method == "POST" and r.path == path]

    def reset(self) -> None:
        requests.delete(f"{self.url}/_config/data", timeout=10).raise_for_status()
        self.sent.clear()
        self.replies.clear()


def _middleware(fake: FakeStripe):
    @web.middleware
    async def idempotency(request: web.Request, handler):
        body = await request.read()  # aiohttp keeps it for localstripe's own read
        key = request.headers.get("Idempotency-Key")
        if request.path.startswith("/v1/"):
            params = dict(parse_qsl(body.decode(), keep_blank_values=True)) if request.method == "POST" else {}
            fake.sent.append(SentRequest(request.method, request.path, params, key))
        if request.method != "POST" or not key:
            return await handler(request)
        slot = (request.headers.get("Authorization", ""), key)
        fingerprint = (request.path, body)
        if slot in fake.replies:
            first, status, payload = fake.replies[slot]
            if first != fingerprint:
                error = {"type": "idempotency_error", "message": "Keys for idempotent requests can only be used "
                         "with the same parameters they were first used with."}  # fmt: skip
                return web.json_response({"error": error}, status=400)
            return web.Response(status=status, body=payload, content_type="application/json",
                                headers={"Idempotent-Replayed": "true"})  # fmt: skip
        response = await handler(request)
        if 200 <= response.status < 300 and isinstance(response, web.Response) and response.body is not None:
            fake.replies[slot] = (fingerprint, response.status, bytes(response.body))
        return response

    return idempotency


@pytest.fixture(scope="session")
def localstripe() -> Iterator[FakeStripe]:
    with warnings.catch_warnings():  # its routes are plain functions, which aiohttp deprecates
        warnings.simplefilter("ignore", DeprecationWarning)
        import localstripe.resources
        from localstripe.server import app

    # localstripe pickles its whole store to /tmp after every write; the tests need none of that.
    localstripe.resources.Store.dump_to_disk = lambda self: None
    # On Stripe, a declined intent takes another payment method and is confirmed again; localstripe keeps the
    # declined charge as the intent's last word, so a new payment method forgets it here.
    intent_update = localstripe.resources.PaymentIntent._update

    def _update(self, **data):
        if "payment_method" in data and self.latest_charge is not None and self.latest_charge.status == "failed":
            self.latest_charge = None
        intent_update(self, **data)

    localstripe.resources.PaymentIntent._update = _update
    # Stripe takes a `description` on a PaymentIntent (a top-up's names it); localstripe refuses any parameter it
    # does not model, so the fake drops it.
    intent_init = localstripe.resources.PaymentIntent.__init__

    def _init(self, *args, description=None, **kwargs):
        intent_init(self, *args, **kwargs)

    localstripe.resources.PaymentIntent.__init__ = _init
    fake = FakeStripe(url="")
    app.middlewares.insert(0, _middleware(fake))
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(app, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    fake.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    thread = threading.Thread(target=loop.run_forever, name="localstripe", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


@pytest.fixture
def fake_stripe(localstripe: FakeStripe, settings) -> Iterator[FakeStripe]:
    """Stripe settings pointing at a localstripe emptied for this test."""
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_PUBLISHABLE_KEY = PUBLISHABLE_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    settings.STRIPE_API_BASE = localstripe.url
    localstripe.reset()
    yield localstripe
