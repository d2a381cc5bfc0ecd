"""The offer endpoints of API.md: public search and detail; providers list, change and delist their offers."""

from __future__ import annotations

from django.http import Http404
from django.utils.translation import get_language
from drf_spectacular.utils import OpenApiParameter, PolymorphicProxySerializer, extend_schema
from rest_framework import mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts.access import Actor
from accounts.apiviews import OrgContextMixin
from accounts.errors import NotAllowed, NotFound
from accounts.inputs import BIGINT_MAX, ascii_int
from accounts.models import Organization
from accounts.permissions import OPERATE, HasOrganization, IsProvider, has_role
from inventory.access import access_offer
from inventory.models import Offer
from marketplace import selectors, services
from marketplace.offer_json import offer_json
from marketplace.serializers import (
    OfferChange,
    OfferInput,
    OfferOutput,
    OfferSearch,
    ReclaimInput,
    ReclaimOutput,
    ResaleOfferInput,
)
from scheduler import resale
from scheduler.access import access_lease
from scheduler.api import IDEMPOTENCY_KEY
from scheduler.idempotency import run_idempotent

SEARCH_PARAMETERS = [
    OpenApiParameter(name, description=text)
    for name, text in [
        ("gpu_model", "GPU model id"),
        ("min_gpus", "At least this many cards free now"),
        ("region", "Region"),
        ("plan", "Only offers pricing this plan"),
        ("interruptible", "Compare interruptible prices"),
        (
            "max_price",
            "At most this price for the plan (card_hour when no plan), in the currency prices are shown in: `currency`,"
            " else your organisation's, else USD (CNY with Accept-Language zh)",
        ),
        ("interconnect", "nvlink, pcie, infinity_fabric, hccs"),
        ("min_reliability", "Share of the last 30 days reachable, 0..1"),
        ("ordering", "price, -price, gpus_free, -gpus_free, reliability, -reliability, newest"),
        ("currency", "Compare and show prices in this currency (default: your organisation's, else USD; CNY for zh)"),
    ]
]


def _need_operator(request: Request) -> None:
    if not has_role(request, OPERATE):
        raise NotAllowed("This needs one of the roles: owner, admin, member.")


class OfferViewSet(OrgContextMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """Search is public; writes need a provider organisation (owner, admin or member) and its own servers."""

    serializer_class = OfferOutput

    def get_permissions(self):
        if self.action in ("list", "retrieve"):
            return [AllowAny()]
        # Any organisation may resell capacity it holds (a resale offer); the rest is a provider's. `create` and
        # `_own` ask for a provider where the offer is not a resale.
        return [IsAuthenticated(), HasOrganization()]

    def _need_provider(self) -> None:
        if not IsProvider().has_permission(self.request, self):
            self.permission_denied(self.request, message=IsProvider.message)

    def _search(self) -> OfferSearch:
        search = OfferSearch(data=self.request.query_params.dict())
        search.is_valid(raise_exception=True)
        return search

    def get_serializer_context(self) -> dict:
        context = super().get_serializer_context()
        context["currency"] = self._currency()
        return context

    def _currency(self) -> str:
        """The currency prices are shown and compared in (`max_price` too): asked for, else the caller's
        organisation's, else the language's usual one (marketplace.selectors.shown_currency, as on the storefront)."""
        org = getattr(self.request, "org", None)
        wanted = self.request.query_params.get("currency") or ""
        if wanted not in Organization.Currency.values:
            wanted = ""  # the search refuses it with 400; a detail shows the usual currency
        return selectors.shown_currency(org, get_language() or "", wanted)

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Offer.objects.none()
        if self.action == "list":
            data = self._search().validated_data
            for unused in ("page", "page_size"):
                data.pop(unused, None)
            data["currency"] = self._currency()
            # Rows, not Offer instances: `list` shows them with marketplace.offer_json.
            return selectors.offers_listed(selectors.OfferQuery(**data), rows=True)
        return selectors.offers_listed()

    def get_object(self) -> Offer:
        """A listed offer with its free cards and reliability (marketplace.selectors.offer_listed); else 404."""
        pk = ascii_int(self.kwargs.get("pk"), 1, BIGINT_MAX)
        offer = None if pk is None else selectors.offer_listed(pk, currency=self._currency())
        if offer is None:
            raise Http404
        self.check_object_permissions(self.request, offer)
        return offer

    @extend_schema(parameters=SEARCH_PARAMETERS)
    def list(self, request: Request, *args, **kwargs) -> Response:
        """The search: its count and the asked page in one statement (ListedOffers.expect), each offer shown from
        that statement's row (marketplace.offer_json: what OfferOutput shows), paginated as every list is."""
        listed = self.get_queryset()
        pages = self.paginator
        if request.query_params.get(pages.page_query_param) not in pages.last_page_strings:
            # The page DRF's pagination will ask for (a bad page or page_size is its 400, as before).
            number, size = pages.get_page_number(request, None), pages.get_page_size(request)
            listed.expect((number - 1) * size, number * size)
        page = self.paginate_queryset(listed)
        currency = self._currency()
        return self.get_paginated_response([offer_json(row, currency) for row in page])

    def _own(self, pk: str) -> Offer:
        _need_operator(self.request)
        if self.request.org.is_provider:
            return access_offer(Actor.for_org(self.request.org), pk)
        try:
            offer = access_offer(Actor.for_org(self.request.org), pk)
        except NotFound:
            offer = None
        if offer is None or not offer.is_resale:
            # A customer organisation owns resale offers only; anything else is refused as before.
            self.permission_denied(self.request, message=IsProvider.message)
        return offer

    @extend_schema(
        request=PolymorphicProxySerializer(
            component_name="OfferCreate", serializers=[OfferInput, ResaleOfferInput], resource_type_field_name=None
        ),
        responses={201: OfferOutput},
    )
    def create(self, request: Request) -> Response:
        """A provider lists its server (`server`), or any organisation resells the cards it holds through its own
        active server_month or pflops_year lease (`backed_by_lease` instead of `server`), by the card-hour."""
        _need_operator(request)
        if isinstance(request.data, dict) and "backed_by_lease" in request.data:
            data = ResaleOfferInput(data=request.data, context={"request": request})
            data.is_valid(raise_exception=True)
            fields = dict(data.validated_data)
            lease = access_lease(Actor.for_org(request.org), fields.pop("backed_by_lease"))
            offer = resale.resale_offer_create(
                org=request.org, lease=lease, server_id=fields.pop("server", None), **fields
            )
        else:
            self._need_provider()
            data = OfferInput(data=request.data, context={"request": request})
            data.is_valid(raise_exception=True)
            offer = services.offer_create(org=request.org, **data.validated_data)
        return Response(OfferOutput(offer, context=self.get_serializer_context()).data, status=status.HTTP_201_CREATED)

    @extend_schema(request=ReclaimInput, responses={200: ReclaimOutput}, parameters=[IDEMPOTENCY_KEY])
    @action(detail=True, methods=["post"])
    def reclaim(self, request: Request, pk: str) -> Response:
        """Lend-back: take `gpu_count` cards of your resale offer back from interruptible leases on it, with the
        usual preemption notice (409 `not_enough_interruptible` when they hold fewer). A retry with the same
        `Idempotency-Key` replays the answer instead of taking more cards."""
        offer = self._own(pk)

        def work():
            data = ReclaimInput(data=request.data)
            data.is_valid(raise_exception=True)
            done = resale.resale_reclaim(offer=offer, gpu_count=data.validated_data["gpu_count"])
            body = {"gpu_count": done.gpu_count, "leases": done.leases, "effective_at": done.effective_at}
            return status.HTTP_200_OK, ReclaimOutput(body).data

        code, body = run_idempotent(request, scope=f"offer.{offer.pk}.reclaim", work=work)
        return Response(body, status=code)

    @extend_schema(request=OfferChange, responses={200: OfferOutput})
    def partial_update(self, request: Request, pk: str) -> Response:
        offer = self._own(pk)
        data = OfferChange(data=request.data)
        data.is_valid(raise_exception=True)
        offer = services.offer_update(offer=offer, **data.validated_data)
        return Response(OfferOutput(offer, context=self.get_serializer_context()).data)

    @extend_schema(request=None, responses={204: None})
    def destroy(self, request: Request, pk: str) -> Response:
        services.offer_delist(offer=self._own(pk))
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(responses={200: OfferOutput(many=True)})
    @action(detail=False, methods=["get"], permission_classes=[IsAuthenticated, HasOrganization])
    def mine(self, request: Request) -> Response:
        """The caller's organisation's offers, live and delisted, newest first."""
        queryset = selectors.offers_of(request.org)
        page = self.paginate_queryset(queryset)
        return self.get_paginated_response(OfferOutput(page, many=True, context=self.get_serializer_context()).data)
