"""The admin site: staff read every tenant there, as in the API and the staff pages (the staff policy,
accounts/access.py); what they may change is Django's model permissions (money rows are read-only)."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib.admin import AdminSite
from django.http import HttpRequest, HttpResponse

from accounts.access import STAFF_READS
from accounts.tenancy import platform_work


class SuanliAdminSite(AdminSite):
    def admin_view(self, view: Callable[..., HttpResponse], cacheable: bool = False) -> Callable[..., HttpResponse]:
        inner = super().admin_view(view, cacheable)

        @wraps(inner)
        def staff_reads(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            # admin_view has let only active staff through; the response is rendered here, inside the scope.
            with platform_work(STAFF_READS):
                response = inner(request, *args, **kwargs)
                if callable(getattr(response, "render", None)) and not getattr(response, "is_rendered", True):
                    response.render()
            return response

        return staff_reads
