"""API routes of accounts: registration, tokens, API keys and organisations."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from accounts import api

router = SimpleRouter()
router.register("orgs", api.OrganizationViewSet, basename="org")
router.register("auth/keys", api.ApiKeyViewSet, basename="api-key")

urlpatterns = [
    path("auth/register/", api.RegisterApi.as_view(), name="auth-register"),
    path("auth/token/", api.TokenApi.as_view(), name="auth-token"),
    path("auth/verification/", api.VerificationApi.as_view(), name="auth-verification"),
    path("auth/verification/confirm/", api.VerificationConfirmApi.as_view(), name="auth-verification-confirm"),
    path("org/events/", api.OrgEventsApi.as_view(), name="org-events"),
    *router.urls,
]
