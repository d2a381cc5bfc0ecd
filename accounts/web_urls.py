"""Page (HTML form) actions for organisations and API keys, mounted at /org/."""

from django.urls import path

from accounts import views

app_name = "org"

urlpatterns = [
    path("switch/", views.organization_switch, name="switch"),
    path("new/", views.organization_new, name="new"),
    path("log/", views.organization_log, name="log"),
    path("<int:org_id>/approve/", views.organization_approve_page, name="approve"),
    path("keys/", views.api_key_new, name="api_key_new"),
    path("keys/<int:key_id>/revoke/", views.api_key_revoke_page, name="api_key_revoke"),
]
