from django.urls import path
from rest_framework.routers import SimpleRouter

from inventory import agent_api, api

router = SimpleRouter()
router.register("servers", api.ServerViewSet, basename="server")

urlpatterns = [
    path("gpu-models/", api.GpuModelListApi.as_view(), name="gpu-model-list"),
    path("agent/enroll/", agent_api.AgentEnrollApi.as_view(), name="agent-enroll"),
    *router.urls,
]
