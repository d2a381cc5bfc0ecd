"""How an organisation pays: its latest BillingTerms row, else the site's default (SUANLI_DEFAULT_PAYMENT_MODE).

Prepaid: top up first, spend the balance (a credit limit lets it go that far below zero). Postpaid: the monthly
invoice, within a credit limit staff set; a postpaid organisation without a limit (`credit_limit` None) is never
refused or stopped for money, as every organisation was before balances (migration 0005 keeps them so).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from django.conf import settings

from accounts.models import Organization
from billing.models import BillingTerms, PaymentMode


@dataclass(frozen=True)
class Terms:
    mode: str
    credit_limit: Decimal | None
    currency: str

    @property
    def limited(self) -> bool:
        """Whether money can run out: false only for postpaid without a credit limit."""
        return self.credit_limit is not None

    @property
    def prepaid(self) -> bool:
        return self.mode == PaymentMode.PREPAID


def terms_of(org: Organization) -> Terms:
    row = BillingTerms.objects.for_org(org).order_by("-id").first()
    if row is not None:
        return Terms(mode=row.mode, credit_limit=row.credit_limit, currency=row.currency)
    return default_terms(org.currency)


def default_terms(currency: str) -> Terms:
    """The terms of an organisation (of `currency`) that has no BillingTerms row: the site's default mode."""
    mode = settings.SUANLI_DEFAULT_PAYMENT_MODE
    return Terms(mode=mode, credit_limit=Decimal(0) if mode == PaymentMode.PREPAID else None, currency=currency)
