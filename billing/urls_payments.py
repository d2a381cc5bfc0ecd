"""API route of an invoice's payment (Stripe)."""

from django.urls import path

from billing import payments_api

urlpatterns = [
    path("invoices/<int:pk>/pay/", payments_api.InvoicePayView.as_view(), name="invoice-pay"),
]
