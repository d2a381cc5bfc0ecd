"""Staff views of billing: money rows are read-only here (every change goes through billing services); staff can
void an open invoice, issue a credit note from the invoice page's action, and set a provider's payout terms."""

from decimal import Decimal, InvalidOperation

from django.contrib import admin, messages

from accounts.admin import TenantAdmin
from accounts.errors import DomainError
from billing import services
from billing.models import (
    CreditNote,
    Invoice,
    InvoiceLine,
    Payment,
    Payout,
    ProviderStatement,
    ProviderTerms,
    StripeEvent,
    UsageRecord,
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
