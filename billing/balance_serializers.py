"""Input and output shapes of the balance API (API.md: Balance and spending): the balance and its breakdown, top-ups,
the ledger, spend limits, and the staff's billing terms and adjustments.

Money is a decimal string with two places beside its currency, as everywhere in the API. Inputs are strict
(unknown fields are a 400) and bounded before a service sees them; the services check the same rules again
(billing/ledger.py, billing/topups.py, billing/funds.py), so a caller other than the API is held to them too.
"""

from __future__ import annotations

from decimal import Decimal

from rest_framework import serializers

from accounts.models import Organization
from accounts.serializers import StrictSerializer
from billing.ledger import MOST
from billing.models import BalanceEntry, PaymentMode, TopUp

CENT = Decimal("0.01")
# A bank reference is part of its entry's unique key (`bank:<org>:<reference>`, 120 characters at most).
REFERENCE_MAX = 80


def money_out(**kwargs) -> serializers.DecimalField:
    """A money amount as the API shows it: a string with two decimal places (any size a sum may reach)."""
    return serializers.DecimalField(max_digits=None, decimal_places=2, **kwargs)


def money_in(*, low: Decimal, **kwargs) -> serializers.DecimalField:
    """A money amount a client sends: at most two decimal places, from `low` to the ledger's MOST."""
    return serializers.DecimalField(max_digits=15, decimal_places=2, min_value=low, max_value=MOST, **kwargs)


def currency_in() -> serializers.ChoiceField:
    return serializers.ChoiceField(choices=Organization.Currency.choices, help_text="The organisation's currency")


# --- the balance --------------------------------------------------------------------------------------------


class BalanceLeaseOutput(serializers.Serializer):
    lease = serializers.IntegerField()
    plan = serializers.CharField()
    state = serializers.CharField()
    month_to_date = money_out(help_text="Its spending this month, before SLA credits and tax")
    burn_per_hour = money_out(help_text="What it costs for the next hour at its cards' prices")


class BalanceVolumeOutput(serializers.Serializer):
    volume = serializers.IntegerField()
    name = serializers.CharField()
    size_gb = serializers.IntegerField()
    state = serializers.CharField(help_text="grace: kept until `wipe_at`, then wiped unless the organisation pays")
    wipe_at = serializers.DateTimeField(allow_null=True, help_text="When a volume in grace is wiped; null otherwise")
    month_to_date = money_out(help_text="Its storage this month")
    burn_per_hour = money_out(help_text="What it costs for the next hour (size x price per GB-month)")


class DailySpendOutput(serializers.Serializer):
    date = serializers.DateField(help_text="A day of this month, in the platform's time zone")
    amount = money_out()


class BalanceOutput(serializers.Serializer):
    currency = serializers.CharField()
    mode = serializers.ChoiceField(choices=PaymentMode.choices, help_text="prepaid: top up first; postpaid: invoiced")
    balance = money_out(help_text="What the organisation has paid in (its ledger's sum)")
    credit_limit = money_out(allow_null=True, help_text="How far staff let it go below zero; null: no limit")
    unpaid = money_out(help_text="What its open invoices still ask")
    available = money_out(
        allow_null=True, help_text="What it may still spend (balance + credit limit - owed and spent); null: no limit"
    )
    month_to_date = money_out(help_text="This month's spending, metered and not yet metered, as it would be invoiced")
    burn_per_hour = money_out(help_text="What its running leases and its volumes cost for the next hour")
    runs_out_at = serializers.DateTimeField(allow_null=True, help_text="When `available` reaches zero at that rate")
    monthly_cap = money_out(allow_null=True, help_text="Its own monthly spend cap; null: none")
    leases = BalanceLeaseOutput(many=True, help_text="The leases that spent this month or are running")
    volumes = BalanceVolumeOutput(many=True, help_text="The volumes billed this month or not wiped yet")
    daily = DailySpendOutput(many=True, help_text="This month's spending by day")
    as_of = serializers.DateTimeField()


# --- top-ups and the ledger ---------------------------------------------------------------------------------


class TopUpInput(StrictSerializer):
    amount = money_in(low=CENT, help_text="From SUANLI_TOP_UP_MIN to SUANLI_TOP_UP_MAX")
    currency = currency_in()


class TopUpStartOutput(serializers.Serializer):
    top_up = serializers.IntegerField(source="top_up.pk")
    client_secret = serializers.CharField(help_text="For Stripe.js to confirm the PaymentIntent")
    publishable_key = serializers.CharField()
    amount = money_out()
    currency = serializers.CharField()


class TopUpOutput(serializers.ModelSerializer):
    amount = money_out()
    refunded = money_out()
    disputed = money_out()

    class Meta:
        model = TopUp
        fields = ["id", "amount", "currency", "state", "refunded", "disputed", "failure_message", "created_at"]


class BalanceEntryOutput(serializers.ModelSerializer):
    amount = money_out(help_text="Signed: money in is positive, money out negative")
    top_up = serializers.IntegerField(source="top_up_id", allow_null=True)
    invoice = serializers.IntegerField(source="invoice_id", allow_null=True)

    class Meta:
        model = BalanceEntry
        fields = ["id", "kind", "amount", "currency", "reference", "reason", "top_up", "invoice", "created_at"]


# --- spend limits -------------------------------------------------------------------------------------------


class SpendLimitInput(StrictSerializer):
    monthly_cap = money_in(low=Decimal(0), allow_null=True, help_text="null: no cap")
    alert_at = serializers.ListField(
        child=serializers.DecimalField(max_digits=5, decimal_places=4, min_value=Decimal("0.0001"), max_value=1),
        min_length=1,
        max_length=5,
        required=False,
        help_text="Shares of the cap (above 0, at most 1) at which the organisation is e-mailed; default [0.5, 0.9]",
    )


class SpendLimitOutput(serializers.Serializer):
    monthly_cap = money_out(allow_null=True)
    currency = serializers.CharField()
    alert_at = serializers.ListField(child=serializers.FloatField())


# --- staff --------------------------------------------------------------------------------------------------


class TermsInput(StrictSerializer):
    mode = serializers.ChoiceField(choices=PaymentMode.choices)
    credit_limit = money_in(
        low=Decimal(0), allow_null=True, help_text="How far below zero it may go; null (postpaid only): no limit"
    )
    currency = currency_in()


class TermsOutput(serializers.Serializer):
    organization = serializers.IntegerField()
    mode = serializers.ChoiceField(choices=PaymentMode.choices)
    credit_limit = money_out(allow_null=True)
    currency = serializers.CharField()


class AdjustmentInput(StrictSerializer):
    amount = money_in(low=-MOST, help_text="Positive adds to the balance, negative takes off (with a reason)")
    currency = currency_in()
    reason = serializers.CharField(max_length=300, required=False, allow_blank=True, default="")
    reference = serializers.CharField(
        max_length=REFERENCE_MAX,
        required=False,
        allow_blank=True,
        default="",
        help_text="The bank's reference of a transfer received: recorded once",
    )
