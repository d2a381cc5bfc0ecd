"""Staff admin for the GPU catalogue, servers (drain, undrain) and cards."""

from django.contrib import admin, messages

from accounts.admin import TenantAdmin
from inventory import services
from inventory.models import Gpu, GpuModel, Server


@admin.register(GpuModel)
class GpuModelAdmin(admin.ModelAdmin):
    # The catalogue is the platform's, not a tenant's: staff keep it (the fixture is its source of truth).
    list_display = ["name", "vendor", "memory_gb", "fp16_tflops", "fp32_tflops", "tdp_w", "interconnect", "active"]
    list_filter = ["vendor", "interconnect", "active"]
    search_fields = ["name", "slug", "vendor"]
    prepopulated_fields = {"slug": ["name"]}


class GpuInline(admin.TabularInline):
    model = Gpu
    extra = 0
    fields = ["index", "uuid", "name", "memory_total_mb", "health", "health_reason", "drained"]
    readonly_fields = ["index", "uuid", "name", "memory_total_mb"]
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
        for server in queryset:
            services.server_drain(server=server, reason=f"drained by staff ({request.user.email})")
        self.message_user(request, f"Drained {queryset.count()} server(s).", messages.SUCCESS)

    @admin.action(description="Undrain selected servers")
    def undrain(self, request, queryset):
        for server in queryset:
            services.server_undrain(server=server)
        self.message_user(request, f"Undrained {queryset.count()} server(s).", messages.SUCCESS)


@admin.register(Gpu)
class GpuAdmin(TenantAdmin):
    list_display = ["__str__", "uuid", "name", "health", "drained"]
    list_filter = ["health", "drained"]
    search_fields = ["uuid", "server__name"]
    list_select_related = ["server"]
    readonly_fields = ["server", "index", "uuid", "serial", "name", "memory_total_mb", "health_changed_at"]

    def has_add_permission(self, request):
        return False
