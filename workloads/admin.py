"""Staff tools: the public template catalogue, and read-only views of keys, workloads and data-access sessions."""

from __future__ import annotations

from django.contrib import admin

from workloads.models import DataAccess, SshKey, Template, Workload


@admin.register(Template)
class TemplateAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "image", "organization", "active"]
    list_filter = ["active"]
    search_fields = ["name", "slug", "image"]


@admin.register(SshKey)
class SshKeyAdmin(admin.ModelAdmin):
    list_display = ["name", "user", "key_type", "bits", "fingerprint", "created_at"]
    search_fields = ["user__email", "fingerprint"]
    readonly_fields = ["user", "name", "public_key", "key_type", "bits", "fingerprint", "created_at"]

    def has_add_permission(self, request) -> bool:
        return False


@admin.register(Workload)
class WorkloadAdmin(admin.ModelAdmin):
    list_display = ["id", "lease", "data_access", "server", "state", "desired", "started_at", "state_changed_at"]
    list_filter = ["state", "desired"]
    readonly_fields = [f.name for f in Workload._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(DataAccess)
class DataAccessAdmin(admin.ModelAdmin):
    """Data-access sessions (workloads.data_access): read only; they are opened and ended by their customers."""

    list_display = ["id", "organization", "server", "state", "price_per_hour", "currency", "created_at", "ends_at"]
    list_filter = ["state"]
    readonly_fields = [f.name for f in DataAccess._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
