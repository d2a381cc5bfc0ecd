"""API routes of provider payouts, the staff reconciliation report and closing a month."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from billing import payouts_api

router = SimpleRouter()
router.register("payouts", payouts_api.PayoutViewSet, basename="payout")

urlpatterns = [
    path("admin/reconciliation/", payouts_api.ReconciliationApi.as_view(), name="admin-reconciliation"),
    path("admin/close-period/", payouts_api.ClosePeriodApi.as_view(), name="admin-close-period"),
    *router.urls,
]
