"""Staff admin for users, organisations, memberships and API keys; `TenantAdmin`, the staff policy's base for
every tenant-owned model's admin."""

from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as BaseUserAdmin

from accounts import services
from accounts.access import STAFF_READS
from accounts.models import ApiKey, Membership, Organization, User


class TenantAdmin(admin.ModelAdmin):
    """A tenant-owned model: staff read every tenant's rows (the staff policy, as in the API and the staff pages);
    what they may change is their model permissions."""

    def get_queryset(self, request):
        return super().get_queryset(request).unscoped(STAFF_READS)


@admin.register(User)
class UserAdmin(BaseUserAdmin):
    ordering = ["email"]
    list_display = ["email", "is_staff", "is_active", "date_joined"]
    search_fields = ["email"]
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Names", {"fields": ("first_name", "last_name")}),
        ("Permissions", {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")}),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = ((None, {"classes": ("wide",), "fields": ("email", "password1", "password2")}),)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


@admin.register(Organization)
class OrganizationAdmin(TenantAdmin):
    list_display = ["name", "kind", "status", "currency", "created_at"]
    list_filter = ["kind", "status"]
    search_fields = ["name"]
    inlines = [MembershipInline]
    readonly_fields = ["approved_at", "approved_by"]
    actions = ["approve"]

    @admin.action(description="Approve selected pending providers")
    def approve(self, request, queryset):
        done = 0
        for org in queryset.filter(status=Organization.Status.PENDING):
            services.organization_approve(org=org, staff=request.user)
            done += 1
        self.message_user(request, f"Approved {done} organization(s).", messages.SUCCESS)


@admin.register(Membership)
class MembershipAdmin(TenantAdmin):
    list_display = ["user", "organization", "role"]
    list_filter = ["role"]
    search_fields = ["user__email", "organization__name"]


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    # The hash is never shown; the prefix is enough to tell keys apart.
    list_display = ["prefix", "user", "name", "created_at", "last_used_at", "revoked_at"]
    fields = ["user", "name", "prefix", "created_at", "last_used_at", "revoked_at"]
    readonly_fields = fields
    search_fields = ["prefix", "user__email"]

    def has_add_permission(self, request):
        return False
