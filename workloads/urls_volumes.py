"""API routes of volumes (mounted under /api/v1/ by config/urls.py)."""

from django.urls import path

from workloads import volumes_api

urlpatterns = [
    path("volumes/", volumes_api.VolumeListApi.as_view(), name="volumes"),
    path("volumes/<str:pk>/", volumes_api.VolumeDetailApi.as_view(), name="volume-detail"),
]
