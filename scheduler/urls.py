from rest_framework.routers import SimpleRouter

from scheduler import api

router = SimpleRouter()
router.register("leases", api.LeaseViewSet, basename="lease")

urlpatterns = [*router.urls]
