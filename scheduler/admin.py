"""Staff views of leases: read-only (every change goes through scheduler.services, which writes the event log)."""

from django.contrib import admin, messages

from accounts.admin import TenantAdmin
from accounts.errors import DomainError
from scheduler import services
from scheduler.models import Lease, LeaseEvent


class LeaseEventInline(admin.TabularInline):
    model = LeaseEvent
    extra = 0
    fields = ["at", "kind", "data"]
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Lease)
class LeaseAdmin(TenantAdmin):
    list_display = ["id", "organization", "plan", "state", "interruptible", "gpu_count", "start_at", "end_at"]
    list_filter = ["plan", "state", "interruptible"]
    search_fields = ["organization__name"]
    list_select_related = ["organization"]
    inlines = [LeaseEventInline]
    actions = ["end_leases"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.action(description="End the selected leases now")
    def end_leases(self, request, queryset):
        for lease in queryset:
            try:
                services.lease_end(lease=lease)
            except DomainError as exc:
                self.message_user(request, f"Lease {lease.pk}: {exc.message}", messages.WARNING)
