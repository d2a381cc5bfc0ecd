from rest_framework.routers import SimpleRouter

from billing import payouts_api

router = SimpleRouter()
router.register("payouts", payouts_api.PayoutViewSet, basename="payout")

urlpatterns = [*router.urls]
