"""The customer's balance pages, mounted at /balance/ (config/urls.py)."""

from django.urls import path

from billing import views_balance

app_name = "balance"

urlpatterns = [
    path("", views_balance.balance, name="balance"),
    path("top-up/", views_balance.top_up, name="top_up"),
    path("spend-limit/", views_balance.spend_limit, name="spend_limit"),
    path("spending.csv", views_balance.spending_csv, name="spending_csv"),
]
