"""App configs: accounts (registers its system checks and the OpenAPI auth extension) and the admin on the site
that applies the staff policy."""

from django.apps import AppConfig
from django.contrib.admin import apps as admin_apps


class AccountsConfig(AppConfig):
    name = "accounts"
    verbose_name = "Accounts and organisations"

    def ready(self) -> None:
        from accounts import checks, schema  # noqa: F401  (register the system checks and the OpenAPI auth extension)


class SuanliAdminConfig(admin_apps.AdminConfig):
    """django.contrib.admin, on the site that applies the staff policy (accounts/admin_site.py)."""

    default = False  # INSTALLED_APPS names it; "accounts" alone means AccountsConfig
    default_site = "accounts.admin_site.SuanliAdminSite"
