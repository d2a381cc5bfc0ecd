"""API route of the broker's book (issue 20): held capacity, resale, idle cards and margin by day."""

from django.urls import path

from billing import broker_api

urlpatterns = [
    path("broker/book/", broker_api.BrokerBookApi.as_view(), name="broker-book"),
]
