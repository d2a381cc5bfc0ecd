"""Staff views of billing: money rows are read-only here (every change goes through billing services); staff can
void an open invoice, issue a credit note from the invoice page's action, and set a provider's payout terms.

Balances: top-ups, spend limits and funds notices are read-only; the ledger (BalanceEntry) and billing terms are
append-only, so neither can be changed or deleted, but staff may add to them: the "add" form of a balance entry
records a bank transfer received or an adjustment, and that of billing terms sets an organisation's terms, each
through billing.services (adjustment_record, terms_set) like the staff API, with the service's errors on the form.
"""

from decimal import Decimal, InvalidOperation

from django import forms
from django.contrib import admin, messages

from accounts.admin import TenantAdmin
from accounts.errors import DomainError
from billing import services
from billing.models import (
    BalanceEntry,
    BillingTerms,
    CreditNote,
    DataAccessRecord,
    FundsNotice,
    Invoice,
    InvoiceLine,
    Payment,
    Payout,
    ProviderStatement,
    ProviderTerms,
    SpendLimit,
    StorageRecord,
    StripeEvent,
    TopUp,
    UsageRecord,
    VolumeNotice,
)


class ReadOnly:
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class InvoiceLineInline(ReadOnly, admin.TabularInline):
    model = InvoiceLine
    extra = 0
    fields = ["lease", "plan", "quantity", "unit", "unit_price", "amount", "sla_credit", "seconds", "down_seconds"]
    readonly_fields = fields


class CreditNoteInline(ReadOnly, admin.TabularInline):
    model = CreditNote
    extra = 0
    fields = ["number", "amount", "currency", "reason", "lease", "created_by", "created_at"]
    readonly_fields = fields


@admin.register(Invoice)
class InvoiceAdmin(ReadOnly, TenantAdmin):
    list_display = ["number", "organization", "period", "state", "total", "currency", "due_at", "overdue"]
    list_filter = ["state", "period", "currency", "overdue"]
    search_fields = ["number", "organization__name"]
    list_select_related = ["organization"]
    inlines = [InvoiceLineInline, CreditNoteInline]
    actions = ["void", "credit_ten_percent"]

    @admin.action(description="Void the selected open invoices")
    def void(self, request, queryset):
        for invoice in queryset:
            try:
                services.invoice_void(invoice=invoice)
            except DomainError as exc:
                self.message_user(request, f"{invoice}: {exc.message}", messages.WARNING)

    @admin.action(description="Issue a credit note of 10 %% of the total (goodwill)")
    def credit_ten_percent(self, request, queryset):
        for invoice in queryset:
            try:
                amount = (invoice.total * Decimal("0.10")).quantize(Decimal("0.01"))
                note = services.credit_note_issue(invoice=invoice, amount=amount, reason="goodwill", by=request.user)
                self.message_user(request, f"{invoice}: credit note {note.number} of {note.amount} {note.currency}")
            except (DomainError, InvalidOperation) as exc:
                self.message_user(request, f"{invoice}: {getattr(exc, 'message', exc)}", messages.WARNING)


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnly, TenantAdmin):
    list_display = ["lease", "allocation", "slot_start", "seconds", "down_seconds", "amount", "currency"]
    list_filter = ["plan", "currency"]
    date_hierarchy = "slot_start"
    list_select_related = ["lease"]


@admin.register(StorageRecord)
class StorageRecordAdmin(ReadOnly, TenantAdmin):
    list_display = ["volume", "organization", "slot_start", "seconds", "size_gb", "unit_price", "amount", "currency"]
    list_filter = ["currency"]
    date_hierarchy = "slot_start"
    list_select_related = ["volume", "organization"]


@admin.register(DataAccessRecord)
class DataAccessRecordAdmin(ReadOnly, TenantAdmin):
    list_display = ["data_access", "organization", "slot_start", "seconds", "unit_price", "amount", "currency"]
    list_filter = ["currency"]
    date_hierarchy = "slot_start"
    list_select_related = ["data_access", "organization"]


@admin.register(CreditNote)
class CreditNoteAdmin(ReadOnly, TenantAdmin):
    list_display = ["number", "invoice", "organization", "amount", "currency", "reason", "created_at"]
    search_fields = ["number", "invoice__number", "organization__name"]


@admin.register(Payment)
class PaymentAdmin(ReadOnly, TenantAdmin):
    list_display = ["stripe_payment_intent", "invoice", "organization", "amount", "currency", "state", "created_at"]
    list_filter = ["state", "currency"]


@admin.register(ProviderStatement)
class ProviderStatementAdmin(ReadOnly, TenantAdmin):
    list_display = ["organization", "period", "currency", "gross", "commission", "credits", "net", "state"]
    list_filter = ["period", "state", "currency"]


@admin.register(Payout)
class PayoutAdmin(ReadOnly, TenantAdmin):
    list_display = ["statement", "organization", "method", "amount", "currency", "state", "reference", "paid_at"]
    list_filter = ["method", "state"]


@admin.register(ProviderTerms)
class ProviderTermsAdmin(TenantAdmin):
    list_display = ["organization", "take_rate", "stripe_account"]
    search_fields = ["organization__name"]


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnly, admin.ModelAdmin):
    list_display = ["event_id", "type", "created", "received_at", "processed_at"]
    list_filter = ["type"]
    search_fields = ["event_id"]


# --- balances ---------------------------------------------------------------------------------------------------


class ServiceForm(forms.ModelForm):
    """A staff form whose row is written by a billing service, not by the form: once the fields are valid, `record`
    calls the service (as the last step of validation, so its refusal is an error on the form and nothing is
    written); `recorded` is the row it made."""

    recorded = None
    user = None

    def record(self, data: dict) -> object:
        """Make the row through the service (each form says which)."""
        raise NotImplementedError

    def _post_clean(self) -> None:
        super()._post_clean()
        if self.errors:
            return
        try:
            self.recorded = self.record(self.cleaned_data)
        except DomainError as exc:
            fields = {name: msgs for name, msgs in (exc.fields or {}).items() if name in self.fields}
            for name, msgs in fields.items():
                self.add_error(name, msgs)
            if not fields:
                self.add_error(None, exc.message)


class ServiceAdd:
    """Add through the form's service call (made by the staff user: `form.user`); the row cannot be changed or
    deleted afterwards."""

    def get_form(self, request, obj=None, change=False, **kwargs):
        form = super().get_form(request, obj, change=change, **kwargs)
        form.user = request.user  # a class made for this request by modelform_factory
        return form

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    def save_form(self, request, form, change):
        return form.recorded

    def save_model(self, request, obj, form, change):
        """The service saved it already."""

    def save_related(self, request, form, formsets, change):
        """Nothing related: the service made the whole row."""


class BalanceEntryForm(ServiceForm):
    class Meta:
        model = BalanceEntry
        fields = ["organization", "amount", "currency", "reference", "reason"]
        help_texts = {
            "amount": "Positive: money received (with the bank's reference: a bank transfer) or a goodwill credit; "
            "negative: money taken off, with a reason.",
            "reference": "The bank's reference of a transfer: recorded once, however often it is entered.",
        }

    def record(self, data: dict) -> BalanceEntry:
        entry, _created = services.adjustment_record(
            org=data["organization"],
            amount=data["amount"],
            currency=data["currency"],
            reason=data.get("reason") or "",
            reference=data.get("reference") or "",
            by=self.user,
        )
        return entry


@admin.register(BalanceEntry)
class BalanceEntryAdmin(ServiceAdd, TenantAdmin):
    list_display = ["created_at", "organization", "kind", "amount", "currency", "reference", "reason", "created_by"]
    list_filter = ["kind", "currency"]
    search_fields = ["organization__name", "reference", "key"]
    date_hierarchy = "created_at"
    list_select_related = ["organization", "created_by"]
    form = BalanceEntryForm


class BillingTermsForm(ServiceForm):
    class Meta:
        model = BillingTerms
        fields = ["organization", "mode", "credit_limit", "currency"]
        help_texts = {
            "credit_limit": "Prepaid: how far below zero the balance may go (0: none). Postpaid: the most it may owe; "
            "empty: no limit (never refused or stopped for money).",
        }

    def record(self, data: dict) -> BillingTerms:
        return services.terms_set(
            org=data["organization"],
            mode=data["mode"],
            credit_limit=data.get("credit_limit"),
            currency=data["currency"],
            by=self.user,
        )


@admin.register(BillingTerms)
class BillingTermsAdmin(ServiceAdd, TenantAdmin):
    list_display = ["organization", "mode", "credit_limit", "currency", "set_by", "created_at"]
    list_filter = ["mode", "currency"]
    search_fields = ["organization__name"]
    list_select_related = ["organization", "set_by"]
    form = BillingTermsForm


@admin.register(TopUp)
class TopUpAdmin(ReadOnly, TenantAdmin):
    list_display = [
        "created_at",
        "organization",
        "amount",
        "currency",
        "state",
        "refunded",
        "disputed",
        "stripe_payment_intent",
    ]
    list_filter = ["state", "currency"]
    search_fields = ["organization__name", "stripe_payment_intent"]
    list_select_related = ["organization"]


@admin.register(SpendLimit)
class SpendLimitAdmin(ReadOnly, TenantAdmin):
    list_display = ["organization", "monthly_cap", "alert_at", "updated_at"]
    search_fields = ["organization__name"]
    list_select_related = ["organization"]


@admin.register(FundsNotice)
class FundsNoticeAdmin(ReadOnly, TenantAdmin):
    list_display = ["created_at", "organization", "kind", "available", "currency", "runs_out_at", "resolved_at"]
    list_filter = ["kind", "currency"]
    search_fields = ["organization__name"]
    list_select_related = ["organization"]
    fields = [
        "organization",
        "kind",
        "period",
        "threshold",
        "available",
        "currency",
        "runs_out_at",
        "contracts_on_credit",
        "created_at",
        "resolved_at",
    ]


@admin.register(VolumeNotice)
class VolumeNoticeAdmin(ReadOnly, TenantAdmin):
    list_display = ["created_at", "organization", "volume", "kind", "wipe_at"]
    list_filter = ["kind"]
    search_fields = ["organization__name", "volume__name"]
    list_select_related = ["organization", "volume"]
