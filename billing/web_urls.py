"""Invoice pages for customers, mounted at /invoices/ (config/urls.py)."""

from django.urls import path

from billing import views_invoices

app_name = "invoices"

urlpatterns = [
    path("", views_invoices.invoice_list, name="invoice_list"),
    path("<int:invoice_id>/", views_invoices.invoice_detail, name="invoice_detail"),
    path("<int:invoice_id>/pdf/", views_invoices.invoice_pdf, name="invoice_pdf"),
]
