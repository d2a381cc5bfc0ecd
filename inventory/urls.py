"""API routes of the inventory: the GPU catalogue and agent enrolment (the server routes are the scheduler's,
scheduler/urls.py; agent reports are the workloads layer's, workloads/urls.py)."""

from django.urls import path

from inventory import agent_api, api

urlpatterns = [
    path("gpu-models/", api.GpuModelListApi.as_view(), name="gpu-model-list"),
    path("agent/enroll/", agent_api.AgentEnrollApi.as_view(), name="agent-enroll"),
]
