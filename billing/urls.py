"""API routes of billing: invoices and a lease's usage."""

from django.urls import path
from rest_framework.routers import SimpleRouter

from billing import api

router = SimpleRouter()
router.register("invoices", api.InvoiceViewSet, basename="invoice")

urlpatterns = [
    path("leases/<int:pk>/usage/", api.LeaseUsageApi.as_view(), name="lease-usage"),
    *router.urls,
]
