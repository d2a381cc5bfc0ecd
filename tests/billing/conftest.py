"""The payment tests' fake Stripe lives in tests/support/fake_stripe.py (a plugin of the whole suite: `localstripe`,
`fake_stripe`); its keys and types are importable from here too, as the billing tests always have."""

from tests.support.fake_stripe import PUBLISHABLE_KEY, SECRET_KEY, WEBHOOK_SECRET, FakeStripe, SentRequest

__all__ = ["PUBLISHABLE_KEY", "SECRET_KEY", "WEBHOOK_SECRET", "FakeStripe", "SentRequest"]
