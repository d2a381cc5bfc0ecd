"""API routes of the scheduler's layer: the servers with their cards' allocation (the leases are routed by
workloads/urls.py, whose lease views add the workloads)."""

from rest_framework.routers import SimpleRouter

from scheduler import servers_api

router = SimpleRouter()
router.register("servers", servers_api.ServerViewSet, basename="server")

urlpatterns = [*router.urls]
