"""API routes of the marketplace: offers."""

from rest_framework.routers import SimpleRouter

from marketplace import api

router = SimpleRouter()
router.register("offers", api.OfferViewSet, basename="offer")

urlpatterns = [*router.urls]
