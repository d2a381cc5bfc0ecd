"""Output shapes of the billing API (API.md: Billing, Leases usage)."""

from __future__ import annotations

from rest_framework import serializers

from billing.models import CreditNote, Invoice, InvoiceLine


class UsageLineOutput(serializers.Serializer):
    plan = serializers.CharField()
    unit = serializers.CharField()
    unit_price = serializers.DecimalField(max_digits=20, decimal_places=6)
    quantity = serializers.DecimalField(max_digits=24, decimal_places=6)
    seconds = serializers.DecimalField(max_digits=18, decimal_places=6)
    down_seconds = serializers.DecimalField(max_digits=18, decimal_places=6)
    amount = serializers.DecimalField(max_digits=18, decimal_places=2)


class UsageOutput(serializers.Serializer):
    amount = serializers.DecimalField(max_digits=18, decimal_places=2)
    currency = serializers.CharField()
    seconds = serializers.DecimalField(max_digits=18, decimal_places=6, help_text="Seconds of card time held")
    down_seconds = serializers.DecimalField(
        max_digits=18, decimal_places=6, help_text="Of them, seconds a card was failed or unreachable: not charged"
    )
    lines = UsageLineOutput(many=True)
    metered_until = serializers.DateTimeField(allow_null=True)
    as_of = serializers.DateTimeField()


class InvoiceLineOutput(serializers.ModelSerializer):
    # A line is a lease's (lease set, volume null) or a volume's storage (plan "storage", lease null).
    lease = serializers.IntegerField(source="lease_id", allow_null=True)
    volume = serializers.IntegerField(source="volume_id", allow_null=True)

    class Meta:
        model = InvoiceLine
        fields = [
            "lease",
            "volume",
            "plan",
            "description",
            "quantity",
            "unit",
            "unit_price",
            "amount",
            "seconds",
            "down_seconds",
            "sla_credit",
        ]


class CreditNoteOutput(serializers.ModelSerializer):
    lease = serializers.IntegerField(source="lease_id", allow_null=True)

    class Meta:
        model = CreditNote
        fields = ["number", "amount", "currency", "reason", "lease", "created_at"]


class InvoiceOutput(serializers.ModelSerializer):
    lines = InvoiceLineOutput(many=True, read_only=True)
    credit_notes = CreditNoteOutput(many=True, read_only=True)

    class Meta:
        model = Invoice
        fields = [
            "id",
            "number",
            "period",
            "state",
            "currency",
            "lines",
            "subtotal",
            "credits",
            "tax_rate",
            "tax",
            "total",
            "refunded",
            "credit_notes",
            "issued_at",
            "due_at",
            "paid_at",
            "overdue",
        ]


class InvoiceSummary(InvoiceOutput):
    class Meta(InvoiceOutput.Meta):
        fields = [f for f in InvoiceOutput.Meta.fields if f not in ("lines", "credit_notes")]
