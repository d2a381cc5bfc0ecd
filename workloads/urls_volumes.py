"""API routes of volumes (mounted under /api/v1/ by config/urls.py), their moves to another server, and the agents'
transfer endpoints of those moves."""

from django.urls import path

from workloads import volume_moves_api, volumes_api

urlpatterns = [
    path("volumes/", volumes_api.VolumeListApi.as_view(), name="volumes"),
    path("volumes/<str:pk>/", volumes_api.VolumeDetailApi.as_view(), name="volume-detail"),
    path("volumes/<str:pk>/move/", volume_moves_api.VolumeMoveApi.as_view(), name="volume-move"),
    path(
        "agent/volume-transfers/<str:move>/",
        volume_moves_api.TransferStatusApi.as_view(),
        name="agent-volume-transfer",
    ),
    path(
        "agent/volume-transfers/<str:move>/chunks/<str:n>/",
        volume_moves_api.TransferChunkApi.as_view(),
        name="agent-volume-transfer-chunk",
    ),
    path(
        "agent/volume-transfers/<str:move>/sent/",
        volume_moves_api.TransferSentApi.as_view(),
        name="agent-volume-transfer-sent",
    ),
    path(
        "agent/volume-transfers/<str:move>/received/",
        volume_moves_api.TransferReceivedApi.as_view(),
        name="agent-volume-transfer-received",
    ),
    path(
        "agent/volume-transfers/<str:move>/failed/",
        volume_moves_api.TransferFailedApi.as_view(),
        name="agent-volume-transfer-failed",
    ),
]
