"""API routes of the workloads layer: leases (with their workloads), SSH keys, templates, and the agent's
signed reports and desired-state read."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from scheduler import elastic_api
from workloads import api, volume_moves_api

router = SimpleRouter()
router.register("leases", api.LeaseViewSet, basename="lease")

restart = api.LeaseViewSet.as_view({"post": "restart_workload"})
stop = api.LeaseViewSet.as_view({"post": "stop_workload"})
logs = api.LeaseViewSet.as_view({"get": "workload_logs"})

urlpatterns = [
    *router.urls,
    path("leases/<str:pk>/workloads/<str:wid>/restart/", restart, name="lease-workload-restart"),
    path("leases/<str:pk>/workloads/<str:wid>/stop/", stop, name="lease-workload-stop"),
    path("leases/<str:pk>/workloads/<str:wid>/logs/", logs, name="lease-workload-logs"),
    path("leases/<str:pk>/move/", volume_moves_api.LeaseMoveApi.as_view(), name="lease-move"),
    path(
        "leases/<str:pk>/scaling/history/",
        elastic_api.LeaseScalingHistoryApi.as_view(),
        name="lease-scaling-history",
    ),
    path("ssh-keys/", api.SshKeyListApi.as_view(), name="ssh-keys"),
    path("ssh-keys/<str:pk>/", api.SshKeyDetailApi.as_view(), name="ssh-key-detail"),
    path("templates/", api.TemplateListApi.as_view(), name="templates"),
    path("agent/reports/", api.AgentReportApi.as_view(), name="agent-reports"),
    path("agent/workloads/", api.AgentWorkloadsApi.as_view(), name="agent-workloads"),
    path("agent/workload-logs/", api.AgentWorkloadLogsApi.as_view(), name="agent-workload-logs"),
]
