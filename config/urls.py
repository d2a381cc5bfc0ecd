"""Root URLs: the API v1 routes of every app, the schema and docs, admin, allauth, health, metrics, the Stripe
webhook and the pages; JSON or page answers for 400/403/404/500."""

import sys

from allauth.account.decorators import secure_admin_login
from django.contrib import admin
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from accounts.errors import error_body, is_api_path
from accounts.middleware import database_unavailable, is_database_unavailable
from billing.webhooks import stripe_webhook
from inventory.metrics import metrics_view


def healthz(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"status": "ok"})


# Staff sign in through allauth's login, like everyone else: its rate limits (ACCOUNT_RATE_LIMITS) and its
# two-factor step (allauth.mfa) apply; Django's own admin login form, which has neither, is never shown.
admin.site.login = secure_admin_login(admin.site.login)

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("inventory.urls")),
    path("", include("scheduler.urls")),
    path("", include("workloads.urls")),
    path("", include("workloads.urls_volumes")),
    path("", include("workloads.urls_data_access")),
    path("", include("marketplace.api_urls")),
    path("", include("billing.urls_payments")),
    path("", include("billing.urls_balance")),
    path("", include("billing.urls_payouts")),
    path("", include("billing.urls_broker")),
    path("", include("billing.urls")),
]

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("allauth.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # templates/api_docs.html: drf-spectacular's Swagger UI page with the CSP nonce on its inline script and style.
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="schema", template_name="api_docs.html"),
        name="api-docs",
    ),
    path("api/v1/", include(api_v1)),
    path("healthz", healthz),
    path("metrics", metrics_view, name="metrics"),
    path("webhooks/stripe/", stripe_webhook, name="stripe-webhook"),
    path("invoices/", include("billing.web_urls")),
    path("balance/", include("billing.urls_balance_pages")),
    path("org/", include("accounts.web_urls")),
    path("", include("marketplace.urls")),
]


def _page_or_json(request: HttpRequest, status: int, code: str, message: str, template: str) -> HttpResponse:
    if is_api_path(request.path):
        return JsonResponse(error_body(code, message), status=status)
    from django.shortcuts import render

    return render(request, template, {"message": message}, status=status)


def handler404(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page_or_json(request, 404, "not_found", "Not found.", "404.html")


def handler500(request: HttpRequest) -> HttpResponse:
    # Called inside Django's `except`: an error of a lost database (restarting, unreachable) is a 503 the
    # client may retry, not a 500; the pool's connection check lets the site recover by itself.
    if is_database_unavailable(sys.exc_info()[1]):
        return database_unavailable(request)
    return _page_or_json(request, 500, "server_error", "Something went wrong on our side.", "500.html")


def handler400(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page_or_json(request, 400, "bad_request", "Bad request.", "400.html")


def handler403(request: HttpRequest, exception: Exception | None = None) -> HttpResponse:
    return _page_or_json(request, 403, "forbidden", "You may not do this.", "403.html")
