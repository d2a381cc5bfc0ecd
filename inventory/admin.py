"""Staff admin for the GPU catalogue, servers and cards; draining and undraining them are actions that call
inventory.services, and a card is otherwise read only (its agent reports it)."""

from django.contrib import admin, messages

from accounts.admin import TenantAdmin
from inventory import services
from inventory.models import Gpu, GpuModel, Server


def _staff_reason(request) -> str:
    return f"drained by staff ({request.user.email})"


def _each(model_admin, request, queryset, act, done: str) -> None:
    """Call `act` (a service) on each selected row, then say how many: "Drained 2 server(s)."."""
    for row in queryset:
        act(row)
    noun = "card(s)" if queryset.model is Gpu else "server(s)"
    model_admin.message_user(request, f"{done} {queryset.count()} {noun}.", messages.SUCCESS)


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    # The catalogue is the platform's, not a tenant's: staff keep it (the fixture is its source of truth).
    list_display = ["name", "vendor", "memory_gb", "fp16_tflops", "fp32_tflops", "tdp_w", "interconnect", "active"]
    list_filter = ["vendor", "interconnect", "active"]
    search_fields = ["name", "slug", "vendor"]
    prepopulated_fields = {"slug": ["name"]}


class GpuInline(admin.TabularInline):
    # Read only: health is the agent's to report (inventory/health.py), and a card is drained or undrained by the
    # card admin's actions, which call inventory.services like every other caller.
    model = Gpu
    extra = 0
    fields = ["index", "uuid", "name", "memory_total_mb", "health", "health_reason", "drained"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None):
        return False  # cards come from the agent's enrolment only


@admin.register(Server)
class ServerAdmin(TenantAdmin):
    list_display = ["name", "organization", "region", "gpu_model", "gpu_count", "status", "drained", "last_seen_at"]
    list_filter = ["status", "drained", "region", "gpu_model"]
    search_fields = ["name", "hostname", "organization__name"]
    list_select_related = ["organization", "gpu_model"]
    inlines = [GpuInline]
    # An explicit field list: the enrolment token hash (and any secret added later) is never shown.
    fields = [
        "organization",
        "name",
        "region",
        "site",
        "gpu_model",
        "gpu_count",
        "cpu_cores",
        "ram_gb",
        "disk_gb",
        "network_gbps",
        "interconnect",
        "status",
        "drained",
        "drained_reason",
        "drained_at",
        "hostname",
        "enrollment_expires_at",
        "enrolled_at",
        "last_seen_at",
        "created_at",
    ]
    readonly_fields = [
        "organization",
        "status",
        "drained",
        "drained_reason",
        "drained_at",
        "hostname",
        "enrollment_expires_at",
        "enrolled_at",
        "last_seen_at",
        "created_at",
    ]
    actions = ["drain", "undrain"]

    def has_add_permission(self, request):
        return False  # providers register servers through the API or their dashboard (services.server_register)

    @admin.action(description="Drain selected servers (no new leases)")
    def drain(self, request, queryset):
        reason = _staff_reason(request)
        _each(self, request, queryset, lambda server: services.server_drain(server=server, reason=reason), "Drained")

    @admin.action(description="Undrain selected servers")
    def undrain(self, request, queryset):
        _each(self, request, queryset, lambda server: services.server_undrain(server=server), "Undrained")


@admin.register(Gpu)
class GpuAdmin(TenantAdmin):
    list_display = ["__str__", "uuid", "name", "health", "drained"]
    list_filter = ["health", "drained"]
    search_fields = ["uuid", "server__name"]
    list_select_related = ["server"]
    actions = ["drain", "undrain"]

    def get_readonly_fields(self, request, obj=None):
        # Every field: the agent reports a card (health, samples, cleaning) and the actions below drain it.
        return [field.name for field in Gpu._meta.fields if field.editable]

    def has_add_permission(self, request):
        return False

    @admin.action(description="Drain selected cards (no new leases)")
    def drain(self, request, queryset):
        reason = _staff_reason(request)
        _each(self, request, queryset, lambda gpu: services.gpu_drain(gpu=gpu, reason=reason), "Drained")

    @admin.action(description="Undrain selected cards")
    def undrain(self, request, queryset):
        _each(self, request, queryset, lambda gpu: services.gpu_undrain(gpu=gpu), "Undrained")
