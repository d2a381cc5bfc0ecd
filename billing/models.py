"""Usage records, invoices and their lines, credit notes, payments, Stripe events, provider statements, payouts.

Money is Decimal with a currency beside it. Usage amounts keep 12 decimal places; an amount is rounded once,
half-up to the cent, on the invoice line (billing/rating.py). A finalised invoice and its lines never change:
PostgreSQL triggers (migration 0002) refuse it, whatever the Python above does; corrections are credit notes.
"""

from __future__ import annotations

from django.db import models
from django.db.models import Q
from django.utils.translation import gettext_lazy as _

from accounts.models import Organization
from accounts.tenancy import TenantQuerySet
from inventory.models import Server
from scheduler.models import Allocation, Lease, Plan
from workloads.models import DataAccess, Volume

CURRENCY = {"max_length": 3, "choices": Organization.Currency.choices}


def money(**kwargs) -> models.DecimalField:
    return models.DecimalField(max_digits=18, decimal_places=2, **kwargs)


def exact(**kwargs) -> models.DecimalField:
    """An unrounded amount or quantity (12 decimal places)."""
    return models.DecimalField(max_digits=30, decimal_places=12, **kwargs)


class UsageRecord(models.Model):
    """The seconds one allocation held its card within one slot (an hour of the platform's clock), rated.

    Made once per (allocation, slot) by `manage.py meter`, only for slots that are over, so a record never
    changes after it is written; running the meter twice or concurrently inserts nothing new. `seconds` is the
    time held; `down_seconds` the part of it the card was failed or its server unreachable (not charged).
    """

    allocation = models.ForeignKey(Allocation, on_delete=models.PROTECT, related_name="usage")
    lease = models.ForeignKey(Lease, on_delete=models.PROTECT, related_name="usage")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="usage")
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="provided_usage")
    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="+")
    plan = models.CharField(max_length=16, choices=Plan.choices)
    slot_start = models.DateTimeField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    seconds = models.DecimalField(max_digits=18, decimal_places=6)
    down_seconds = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    units = models.DecimalField(max_digits=30, decimal_places=18)
    unit_price = models.DecimalField(max_digits=20, decimal_places=6)
    currency = models.CharField(**CURRENCY)
    quantity = exact(help_text=_("Billable seconds in the plan's unit (card-hours, server-months, PFLOPS-years)"))
    amount = exact()
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    PROVIDER_FIELD = "provider"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["allocation", "slot_start"], name="usage_once_per_slot"),
            models.CheckConstraint(condition=Q(end__gt=models.F("start")), name="usage_end_after_start"),
            models.CheckConstraint(
                condition=Q(down_seconds__gte=0, down_seconds__lte=models.F("seconds")), name="usage_down_within"
            ),
            models.CheckConstraint(condition=Q(amount__gte=0), name="usage_amount_not_negative"),
        ]
        indexes = [
            models.Index(fields=["organization", "slot_start"], name="usage_org_slot"),
            models.Index(fields=["provider", "slot_start"], name="usage_provider_slot"),
            models.Index(fields=["lease", "slot_start"], name="usage_lease_slot"),
            models.Index(fields=["slot_start"], name="usage_slot"),
        ]

    def __str__(self) -> str:
        return f"allocation {self.allocation_id} at {self.slot_start}: {self.amount} {self.currency}"


class SlotRecord(models.Model):
    """What a record of the seconds one volume or data-access session was billed for within one slot (an hour of the
    platform's clock) keeps besides what it bills, its parties, its unit price and quantity (StorageRecord,
    DataAccessRecord): the server, the slot and the seconds in it, the amount and its currency."""

    server = models.ForeignKey(Server, on_delete=models.PROTECT, related_name="+")
    slot_start = models.DateTimeField()
    start = models.DateTimeField()
    end = models.DateTimeField()
    seconds = models.DecimalField(max_digits=18, decimal_places=6)
    currency = models.CharField(**CURRENCY)
    amount = exact()
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    PROVIDER_FIELD = "provider"
    objects = TenantQuerySet.as_manager()

    class Meta:
        abstract = True
        ordering = ["id"]


def slot_record_rules(prefix: str, owner: str) -> list[models.BaseConstraint]:
    """A slot record's constraints, named `<prefix>_...`: one record per `owner` and slot, its end after its start,
    its amount not negative."""
    return [
        models.UniqueConstraint(fields=[owner, "slot_start"], name=f"{prefix}_once_per_slot"),
        models.CheckConstraint(condition=Q(end__gt=models.F("start")), name=f"{prefix}_end_after_start"),
        models.CheckConstraint(condition=Q(amount__gte=0), name=f"{prefix}_amount_not_negative"),
    ]


def slot_record_indexes(prefix: str, *more: models.Index) -> list[models.Index]:
    """A slot record's indexes by organisation, provider and slot (and `more` before the last), named `<prefix>_...`."""
    return [
        models.Index(fields=["organization", "slot_start"], name=f"{prefix}_org_slot"),
        models.Index(fields=["provider", "slot_start"], name=f"{prefix}_provider_slot"),
        *more,
        models.Index(fields=["slot_start"], name=f"{prefix}_slot"),
    ]


class StorageRecord(SlotRecord):
    """The seconds one volume existed within one slot (an hour of the platform's clock), rated per GB-month.

    A volume takes its disk from `created_at` until its data is wiped (`wiped_at`), whatever its state in between
    (ready, in use, in grace), so each of those seconds is billed once: size_gb x price per GB-month, pro-rated over
    the seconds of the calendar month like a server-month (billing/rating.py, units = size_gb). Made by `meter` in
    the run that writes the usage records, for slots that are over, once per (volume, slot).
    """

    volume = models.ForeignKey(Volume, on_delete=models.PROTECT, related_name="storage_usage")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="storage_usage")
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="provided_storage")
    size_gb = models.PositiveIntegerField()
    unit_price = models.DecimalField(max_digits=20, decimal_places=6, help_text=_("Per GB-month"))
    quantity = exact(help_text=_("GB-months"))

    class Meta(SlotRecord.Meta):
        constraints = slot_record_rules("storage", "volume")
        indexes = slot_record_indexes(
            "storage", models.Index(fields=["volume", "slot_start"], name="storage_volume_slot")
        )

    def __str__(self) -> str:
        return f"volume {self.volume_id} at {self.slot_start}: {self.amount} {self.currency}"


class MeterRun(models.Model):
    """The meter's watermark: every slot that ended at or before `until` is in the usage records."""

    until = models.DateTimeField()
    records = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-until"]
        get_latest_by = "until"

    def __str__(self) -> str:
        return f"metered until {self.until}"


class PeriodClose(models.Model):
    """A month staff (or the beat job) closed: written by `close_period` each time it runs, so a month that made no
    invoice and no statement (nobody used anything) is still listed as closed, with what its last run found."""

    period = models.CharField(max_length=7, unique=True)  # YYYY-MM in the platform timezone
    closed_at = models.DateTimeField()
    invoices = models.PositiveIntegerField(default=0)
    statements = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-period"]

    def __str__(self) -> str:
        return f"{self.period} closed at {self.closed_at}"


class Invoice(models.Model):
    class State(models.TextChoices):
        DRAFT = "draft", _("Draft")
        OPEN = "open", _("Open")
        PAID = "paid", _("Paid")
        VOID = "void", _("Void")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="invoices")
    period = models.CharField(max_length=7, help_text="YYYY-MM")
    number = models.CharField(max_length=20, blank=True)
    state = models.CharField(max_length=8, choices=State.choices, default=State.DRAFT)
    currency = models.CharField(**CURRENCY)
    subtotal = money(default=0)
    credits = money(default=0)
    tax_rate = models.DecimalField(max_digits=6, decimal_places=4, default=0)
    tax = money(default=0)
    total = money(default=0)
    issued_at = models.DateTimeField(null=True, blank=True)
    due_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    overdue = models.BooleanField(default=False)
    refunded = money(default=0)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-period", "-id"]
        constraints = [
            # One invoice per organisation and month and currency: closing a period twice makes nothing new.
            models.UniqueConstraint(fields=["organization", "period", "currency"], name="invoice_once_per_period"),
            models.UniqueConstraint(fields=["number"], condition=~Q(number=""), name="invoice_number_unique"),
            models.CheckConstraint(condition=Q(state__in=["draft", "open", "paid", "void"]), name="invoice_state_ok"),
            models.CheckConstraint(condition=Q(state="draft") | ~Q(number=""), name="invoice_issued_has_number"),
            models.CheckConstraint(
                condition=Q(total=models.F("subtotal") - models.F("credits") + models.F("tax")), name="invoice_sums"
            ),
        ]

    def __str__(self) -> str:
        return self.number or f"draft invoice {self.pk}"

    def credited(self):
        """The sum of the credit notes issued on this invoice."""
        from django.db.models import Sum

        return self.credit_notes.aggregate(t=Sum("amount"))["t"] or 0

    def amount_due(self):
        """What the customer pays: the total less its credit notes."""
        return self.total - self.credited()


class DataAccessRecord(SlotRecord):
    """The seconds one data-access session ran within one slot (an hour of the platform's clock), rated per hour
    at the session's price (units 1, like one card-hour). From its container's first `running` report until it
    ended (or its `ends_at`, whichever comes first); made by `meter` with the usage and storage records, once per
    (session, slot)."""

    data_access = models.ForeignKey(DataAccess, on_delete=models.PROTECT, related_name="usage")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="data_access_usage")
    provider = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="provided_data_access")
    unit_price = models.DecimalField(max_digits=20, decimal_places=6, help_text=_("Per hour"))
    quantity = exact(help_text=_("Hours"))

    class Meta(SlotRecord.Meta):
        constraints = slot_record_rules("data_access", "data_access")
        indexes = slot_record_indexes("data_access")

    def __str__(self) -> str:
        return f"data access {self.data_access_id} {self.start:%Y-%m-%d %H:%M}: {self.amount} {self.currency}"


STORAGE = "storage"  # the plan of an invoice line for a volume's storage (not a lease's plan)
DATA_ACCESS = "data_access"  # the plan of an invoice line for a data-access session's hours
LINE_PLANS = [*Plan.choices, (STORAGE, _("Storage")), (DATA_ACCESS, _("Data access"))]


class InvoiceLine(models.Model):
    """One lease's charge under one plan and unit price in the invoice's month, or one volume's storage at one
    price per GB-month (plan `storage`, no SLA credit), or one data-access session's hours at its price per hour
    (plan `data_access`, no SLA credit); rounded once, here. Exactly one of lease, volume and data access."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="lines")
    lease = models.ForeignKey(Lease, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    volume = models.ForeignKey(Volume, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    data_access = models.ForeignKey(DataAccess, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    plan = models.CharField(max_length=16, choices=LINE_PLANS)
    description = models.CharField(max_length=200)
    quantity = models.DecimalField(max_digits=24, decimal_places=6)
    unit = models.CharField(max_length=20)
    unit_price = models.DecimalField(max_digits=20, decimal_places=6)
    amount = money()
    exact_amount = exact()
    seconds = models.DecimalField(max_digits=18, decimal_places=6)
    down_seconds = models.DecimalField(max_digits=18, decimal_places=6, default=0)
    sla_credit = money(default=0)

    TENANT_FIELD = "invoice__organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            models.UniqueConstraint(fields=["invoice", "lease", "plan", "unit_price"], name="invoiceline_unique"),
            models.UniqueConstraint(fields=["invoice", "volume", "unit_price"], name="invoiceline_volume_unique"),
            models.UniqueConstraint(fields=["invoice", "data_access", "unit_price"], name="invoiceline_access_unique"),
            models.CheckConstraint(
                condition=Q(
                    lease__isnull=False,
                    volume__isnull=True,
                    data_access__isnull=True,
                    plan__in=["card_hour", "server_month", "pflops_year"],
                )
                | Q(lease__isnull=True, volume__isnull=False, data_access__isnull=True, plan=STORAGE, sla_credit=0)
                | Q(lease__isnull=True, volume__isnull=True, data_access__isnull=False, plan=DATA_ACCESS, sla_credit=0),
                name="invoiceline_lease_volume_or_access",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.description}: {self.amount}"


class DocumentCounter(models.Model):
    """Gap-free numbering: the row of a series is locked while a number is taken, inside the transaction that
    issues the document, so a rolled-back issue returns its number."""

    series = models.CharField(max_length=10, primary_key=True)
    last = models.PositiveBigIntegerField(default=0)

    def __str__(self) -> str:
        return f"{self.series} #{self.last}"


class CreditNote(models.Model):
    """A correction to a finalised invoice: money given back to the customer (and charged back to providers)."""

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="credit_notes")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="credit_notes")
    number = models.CharField(max_length=20, unique=True)
    amount = money()
    currency = models.CharField(**CURRENCY)
    reason = models.CharField(max_length=300)
    lease = models.ForeignKey(Lease, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="creditnote_positive")]

    def __str__(self) -> str:
        return self.number


class Payment(models.Model):
    """A Stripe PaymentIntent for an invoice; one per invoice and attempt key (its idempotency key)."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        SUCCEEDED = "succeeded", _("Succeeded")
        FAILED = "failed", _("Failed")
        REFUNDED = "refunded", _("Refunded")
        CANCELED = "canceled", _("Canceled")

    invoice = models.ForeignKey(Invoice, on_delete=models.PROTECT, related_name="payments")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="payments")
    stripe_payment_intent = models.CharField(max_length=100, unique=True)
    amount = money()
    currency = models.CharField(**CURRENCY)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    refunded = money(default=0)
    failure_message = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.stripe_payment_intent} ({self.state})"


class StripeEvent(models.Model):
    """Each Stripe webhook event stored once, by its id; `processed_at` set in the transaction that applied it."""

    event_id = models.CharField(max_length=100, unique=True)
    type = models.CharField(max_length=100)
    created = models.DateTimeField(help_text=_("When Stripe created the event (orders out-of-order deliveries)"))
    payload = models.JSONField()
    received_at = models.DateTimeField(auto_now_add=True)
    processed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.type} {self.event_id}"


class StripeCustomer(models.Model):
    organization = models.OneToOneField(Organization, on_delete=models.PROTECT, related_name="stripe_customer")
    customer_id = models.CharField(max_length=100, unique=True)
    created_at = models.DateTimeField(auto_now_add=True)

    def __str__(self) -> str:
        return self.customer_id


class ProviderStatement(models.Model):
    """A provider's month in one currency: gross from its cards' usage, the platform's commission, credits
    charged back, and the net paid out."""

    class State(models.TextChoices):
        OPEN = "open", _("To be paid")
        PAID = "paid", _("Paid")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="statements")
    period = models.CharField(max_length=7)
    currency = models.CharField(**CURRENCY)
    gross = money()
    take_rate = models.DecimalField(max_digits=5, decimal_places=4)
    commission = money()
    credits = money(default=0)
    net = money()
    state = models.CharField(max_length=8, choices=State.choices, default=State.OPEN)
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-period", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["organization", "period", "currency"], name="statement_once_per_period"),
            models.CheckConstraint(
                condition=Q(net=models.F("gross") - models.F("commission") - models.F("credits")), name="statement_sums"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id} {self.period} {self.currency}: net {self.net}"


class Payout(models.Model):
    """Money sent to a provider for a statement: a Stripe Connect transfer, or a bank settlement staff record."""

    class Method(models.TextChoices):
        STRIPE_TRANSFER = "stripe_transfer", _("Stripe Connect transfer")
        BANK = "bank", _("Bank settlement")

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        PAID = "paid", _("Paid")
        FAILED = "failed", _("Failed")

    statement = models.ForeignKey(ProviderStatement, on_delete=models.PROTECT, related_name="payouts")
    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="payouts")
    method = models.CharField(max_length=20, choices=Method.choices)
    amount = money()
    currency = models.CharField(**CURRENCY)
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    reference = models.CharField(max_length=200, blank=True, help_text=_("Transfer id or bank reference"))
    failure_message = models.CharField(max_length=300, blank=True)
    recorded_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    paid_at = models.DateTimeField(null=True, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["id"]
        constraints = [
            # One live payout per statement: paying twice is refused by the database.
            models.UniqueConstraint(fields=["statement"], condition=~Q(state="failed"), name="payout_once"),
        ]

    def __str__(self) -> str:
        return f"{self.method} {self.amount} {self.currency} ({self.state})"


class ProviderTerms(models.Model):
    """A provider's payout terms: its own commission rate (else SUANLI_TAKE_RATE) and Stripe Connect account
    (none for providers Stripe Connect cannot pay, e.g. in mainland China: staff settle by bank)."""

    organization = models.OneToOneField(Organization, on_delete=models.PROTECT, related_name="provider_terms")
    take_rate = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    stripe_account = models.CharField(max_length=100, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "provider terms"
        constraints = [
            models.CheckConstraint(
                condition=Q(take_rate__isnull=True) | Q(take_rate__gte=0, take_rate__lt=1), name="terms_take_rate"
            )
        ]

    def __str__(self) -> str:
        return f"terms of {self.organization_id}"


# --- balances: how an organisation pays, its ledger, top-ups, caps and notices ---------------------------------


class PaymentMode(models.TextChoices):
    PREPAID = "prepaid", _("Prepaid")
    POSTPAID = "postpaid", _("Postpaid")


class BillingTerms(models.Model):
    """How an organisation pays, as staff set it: prepaid (top up first, spend the balance) or postpaid (the monthly
    invoice) with a credit limit. Append-only: a change is a new row, the latest is in force (billing/balances.py
    says what applies to an organisation without one). A postpaid credit limit of NULL is no limit at all."""

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="billing_terms")
    mode = models.CharField(max_length=8, choices=PaymentMode.choices)
    credit_limit = money(null=True, blank=True)
    currency = models.CharField(**CURRENCY)
    set_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "billing terms"
        ordering = ["-id"]
        constraints = [
            models.CheckConstraint(condition=Q(mode__in=["prepaid", "postpaid"]), name="terms_mode_valid"),
            models.CheckConstraint(
                condition=Q(credit_limit__gte=0) | Q(credit_limit__isnull=True, mode="postpaid"),
                name="terms_credit_limit_ok",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.organization_id}: {self.mode}, credit {self.credit_limit} {self.currency}"


class TopUp(models.Model):
    """Money a customer pays in ahead of use (充值): a Stripe PaymentIntent. Its ledger entries (the credit once it
    succeeds, refunds and disputes) are what moves the balance; this row follows Stripe's state."""

    class State(models.TextChoices):
        PENDING = "pending", _("Pending")
        FAILED = "failed", _("Failed")
        CANCELED = "canceled", _("Canceled")
        SUCCEEDED = "succeeded", _("Succeeded")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="top_ups")
    amount = money()
    currency = models.CharField(**CURRENCY)
    stripe_payment_intent = models.CharField(max_length=100, unique=True)
    state = models.CharField(max_length=12, choices=State.choices, default=State.PENDING)
    refunded = money(default=0)
    disputed = money(default=0)
    failure_message = models.CharField(max_length=300, blank=True)
    created_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-id"]
        constraints = [models.CheckConstraint(condition=Q(amount__gt=0), name="topup_positive")]

    def __str__(self) -> str:
        return f"top-up {self.amount} {self.currency} ({self.state})"


class BalanceEntry(models.Model):
    """One movement of an organisation's balance: immutable (a PostgreSQL trigger refuses UPDATE and DELETE) and
    made once per cause (`key` is unique: a Stripe payment credits once however often its webhook comes)."""

    class Kind(models.TextChoices):
        TOP_UP = "top_up", _("Top-up")
        REFUND = "refund", _("Top-up refunded")
        DISPUTE = "dispute", _("Top-up disputed")
        DISPUTE_WON = "dispute_won", _("Dispute won")
        BANK_TRANSFER = "bank_transfer", _("Bank transfer")
        ADJUSTMENT = "adjustment", _("Adjustment")
        SETTLEMENT = "settlement", _("Invoice settled from the balance")
        CREDIT_NOTE = "credit_note", _("Credit note returned to the balance")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="balance_entries")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    amount = money()
    currency = models.CharField(**CURRENCY)
    key = models.CharField(max_length=120, unique=True)
    reference = models.CharField(max_length=200, blank=True)
    reason = models.CharField(max_length=300, blank=True)
    top_up = models.ForeignKey(TopUp, null=True, blank=True, on_delete=models.PROTECT, related_name="entries")
    invoice = models.ForeignKey(Invoice, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    credit_note = models.ForeignKey(CreditNote, null=True, blank=True, on_delete=models.PROTECT, related_name="+")
    created_by = models.ForeignKey("accounts.User", null=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField()

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        verbose_name_plural = "balance entries"
        ordering = ["-created_at", "-id"]
        constraints = [
            models.CheckConstraint(condition=~Q(amount=0), name="entry_not_zero"),
            models.CheckConstraint(
                condition=Q(kind__in=["top_up", "dispute_won", "bank_transfer", "credit_note"], amount__gt=0)
                | Q(kind__in=["refund", "dispute", "settlement"], amount__lt=0)
                | Q(kind="adjustment"),
                name="entry_sign_of_kind",
            ),
            models.CheckConstraint(
                condition=~Q(kind__in=["adjustment", "bank_transfer"]) | ~Q(reason="") | ~Q(reference=""),
                name="entry_staff_says_why",
            ),
            models.UniqueConstraint(
                fields=["invoice"], condition=Q(kind="settlement"), name="entry_settles_invoice_once"
            ),
        ]
        indexes = [models.Index(fields=["organization", "currency", "created_at"], name="entry_org_time")]

    def __str__(self) -> str:
        return f"{self.kind} {self.amount} {self.currency}"


class SpendLimit(models.Model):
    """A customer's own monthly cap on spending (none: no cap) and the shares of it at which it is told by e-mail."""

    organization = models.OneToOneField(Organization, on_delete=models.PROTECT, related_name="spend_limit")
    monthly_cap = money(null=True, blank=True)
    alert_at = models.JSONField(default=list)
    updated_at = models.DateTimeField(auto_now=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(monthly_cap__isnull=True) | Q(monthly_cap__gte=0), name="spendlimit_cap_ok"
            )
        ]

    def __str__(self) -> str:
        return f"cap {self.monthly_cap} of {self.organization_id}"


class VolumeNotice(models.Model):
    """What an organisation was told about one volume in grace, once each per grace period (its `wipe_at`): it
    entered grace, 3 and 1 days before it is wiped, and it is being wiped."""

    class Kind(models.TextChoices):
        GRACE = "grace", _("Volume kept for a grace period")
        DAYS_3 = "days_3", _("Volume wiped in 3 days")
        DAYS_1 = "days_1", _("Volume wiped in 1 day")
        WIPING = "wiping", _("Volume being wiped")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="volume_notices")
    volume = models.ForeignKey(Volume, on_delete=models.PROTECT, related_name="notices")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    wipe_at = models.DateTimeField()
    created_at = models.DateTimeField()

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["volume", "kind", "wipe_at"], name="volume_notice_once"),
            models.CheckConstraint(
                condition=Q(kind__in=["grace", "days_3", "days_1", "wiping"]), name="volume_notice_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for volume {self.volume_id} (wipe at {self.wipe_at})"


class FundsNotice(models.Model):
    """What an organisation was told about its money, once each: its balance runs low (`low`: the notice before
    card-hour leases are stopped), it ran out and they were stopped (`stopped`), or its month's spending passed a
    share of its cap (`cap_alert`, once per month and share)."""

    class Kind(models.TextChoices):
        LOW = "low", _("Balance running out")
        STOPPED = "stopped", _("Leases stopped: funds exhausted")
        CAP_ALERT = "cap_alert", _("Spend alert")

    organization = models.ForeignKey(Organization, on_delete=models.PROTECT, related_name="funds_notices")
    kind = models.CharField(max_length=12, choices=Kind.choices)
    period = models.CharField(max_length=7, blank=True)
    threshold = models.DecimalField(max_digits=5, decimal_places=4, null=True, blank=True)
    available = money()
    currency = models.CharField(**CURRENCY)
    runs_out_at = models.DateTimeField(null=True, blank=True)
    # Contracts left running on credit when the card-hour leases were stopped: staff look at these.
    contracts_on_credit = models.PositiveIntegerField(default=0)
    # Card-hour leases a `stopped` notice ended (0: the organisation had only volumes or contracts to stop).
    leases_ended = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField()
    # A `low` notice is over once the balance recovers (a top-up) or its leases were stopped.
    resolved_at = models.DateTimeField(null=True, blank=True)

    TENANT_FIELD = "organization"
    objects = TenantQuerySet.as_manager()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["organization"], condition=Q(kind="low", resolved_at__isnull=True), name="notice_one_open_low"
            ),
            models.UniqueConstraint(
                fields=["organization", "period", "threshold"], condition=Q(kind="cap_alert"), name="notice_cap_once"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.kind} for {self.organization_id} at {self.created_at}"
