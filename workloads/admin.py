"""Staff tools: the public template catalogue, and read-only views of keys and workloads."""

from __future__ import annotations

from django.contrib import admin

from workloads.models import SshKey, Template, Workload


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
    list_display = ["id", "lease", "server", "state", "desired", "started_at", "state_changed_at"]
    list_filter = ["state", "desired"]
    readonly_fields = [f.name for f in Workload._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False
