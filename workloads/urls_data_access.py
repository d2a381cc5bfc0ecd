"""API routes of data-access sessions (mounted under /api/v1/ by config/urls.py)."""

from django.urls import path

from workloads import data_access_api

urlpatterns = [
    path("data-access/", data_access_api.DataAccessListApi.as_view(), name="data-access"),
    path("data-access/<str:pk>/", data_access_api.DataAccessDetailApi.as_view(), name="data-access-detail"),
]
