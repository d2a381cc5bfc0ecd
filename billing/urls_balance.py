"""API routes of balances (API.md: Balance and spending): the balance, top-ups, the ledger, spend limits, and the
staff's billing terms and adjustments of an organisation."""

from django.urls import path

from billing import balance_api

urlpatterns = [
    path("balance/", balance_api.BalanceApi.as_view(), name="balance"),
    path("balance/top-ups/", balance_api.TopUpsApi.as_view(), name="balance-top-ups"),
    path("balance/entries/", balance_api.BalanceEntriesApi.as_view(), name="balance-entries"),
    path("spend-limits/", balance_api.SpendLimitApi.as_view(), name="spend-limits"),
    path("orgs/<int:pk>/billing/", balance_api.OrgBillingTermsApi.as_view(), name="org-billing"),
    path(
        "orgs/<int:pk>/balance/adjustments/",
        balance_api.OrgBalanceAdjustmentsApi.as_view(),
        name="org-balance-adjustments",
    ),
]
