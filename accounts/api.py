"""The account endpoints of API.md (Auth): register, token, API keys, organisations, members, staff approval."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.utils import extend_schema
from rest_framework import generics, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response

from accounts import org_log, selectors, services, verification
from accounts.access import Actor, access_one, access_organization, parse_id
from accounts.apiviews import OrgAPIView, OrgContextMixin
from accounts.errors import InvalidInput, NotAllowed
from accounts.models import ApiKey, Membership, Organization, OrgEvent
from accounts.pagination import NewestFirstCursor
from accounts.permissions import HasOrganization, IsStaff
from accounts.serializers import (
    ApiKeyCreated,
    ApiKeyInput,
    ApiKeyOutput,
    MembershipInput,
    MembershipOutput,
    MembershipUpdate,
    OrganizationInput,
    OrganizationOutput,
    OrgEventOutput,
    RegisterInput,
    RegisterOutput,
    TokenInput,
    TokenOutput,
    VerificationConfirmInput,
    VerificationInput,
)
from accounts.throttling import AuthThrottle, RegisterThrottle


class RegisterApi(OrgAPIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [RegisterThrottle]

    @extend_schema(request=RegisterInput, responses={201: RegisterOutput})
    def post(self, request: Request) -> Response:
        data = RegisterInput(data=request.data)
        data.is_valid(raise_exception=True)
        org = data.validated_data["organization"]
        user, organization, token = services.user_register(
            email=data.validated_data["email"],
            password=data.validated_data["password"],
            org_name=org["name"],
            org_kind=org["kind"],
            currency=org["currency"],
        )
        if not user._state.adding:  # a real account (a taken e-mail gets a stand-in and its owner another mail)
            django_request = request._request
            transaction.on_commit(lambda: verification.send_verification(request=django_request, email=user.email))
        body = RegisterOutput(
            {
                "user": user,
                "organization": organization,
                "token": token,
                "email_verified": not verification.verification_required(),
                "verification": REGISTERED_MESSAGE if verification.verification_required() else "",
            },
            context={"roles": {organization.pk: "owner"}},
        ).data
        return Response(body, status=status.HTTP_201_CREATED)


REGISTERED_MESSAGE = (
    "We sent a link to your e-mail address. The token answers 403 email_unverified until you follow it (in "
    "development the mail is printed on the server's console); POST /api/v1/auth/verification/ sends a new one."
)
VERIFICATION_SENT = "If this address has an account waiting for verification, a new link is on its way to it."


class VerificationApi(OrgAPIView):
    """A new verification link for an e-mail address; the same answer whether or not it has an account."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [RegisterThrottle]

    @extend_schema(request=VerificationInput, responses={202: None})
    def post(self, request: Request) -> Response:
        data = VerificationInput(data=request.data)
        data.is_valid(raise_exception=True)
        verification.send_verification(request=request._request, email=data.validated_data["email"])
        return Response({"detail": VERIFICATION_SENT}, status=status.HTTP_202_ACCEPTED)


class VerificationConfirmApi(OrgAPIView):
    """Confirm an address with the key of its verification link (the last part of /accounts/confirm-email/<key>/)."""

    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [AuthThrottle]

    @extend_schema(request=VerificationConfirmInput, responses={200: None})
    def post(self, request: Request) -> Response:
        data = VerificationConfirmInput(data=request.data)
        data.is_valid(raise_exception=True)
        if not verification.confirm_key(request=request._request, key=data.validated_data["key"]):
            raise InvalidInput("This verification link is invalid or has expired.", code="verification_invalid")
        return Response({"email_verified": True})


class TokenApi(OrgAPIView):
    permission_classes = [AllowAny]
    authentication_classes: list = []
    throttle_classes = [AuthThrottle]

    @extend_schema(request=TokenInput, responses={200: TokenOutput})
    def post(self, request: Request) -> Response:
        data = TokenInput(data=request.data)
        data.is_valid(raise_exception=True)
        token = services.api_token_issue(
            request=request._request,
            email=data.validated_data["email"],
            password=data.validated_data["password"],
            name=data.validated_data.get("name") or "",
            code=data.validated_data.get("code") or "",
        )
        return Response({"token": token})


class ApiKeyViewSet(OrgContextMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """The caller's own API keys: list, create (the token is shown once), revoke."""

    serializer_class = ApiKeyOutput

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return ApiKey.objects.none()
        return selectors.api_keys_for_user(user=self.request.user)

    @extend_schema(request=ApiKeyInput, responses={201: ApiKeyCreated})
    def create(self, request: Request) -> Response:
        data = ApiKeyInput(data=request.data)
        data.is_valid(raise_exception=True)
        key, token = services.api_key_create(user=request.user, name=data.validated_data["name"])
        key.token = token
        return Response(ApiKeyCreated(key).data, status=status.HTTP_201_CREATED)

    @extend_schema(responses={200: ApiKeyOutput})
    def destroy(self, request: Request, pk: str) -> Response:
        key = services.api_key_revoke(user=request.user, key_id=parse_id(pk, "API key"))
        return Response(ApiKeyOutput(key).data)


class OrganizationViewSet(OrgContextMixin, mixins.ListModelMixin, viewsets.GenericViewSet):
    """Organisations the caller belongs to (staff: all), their members, and staff approval."""

    serializer_class = OrganizationOutput
    filterset_fields = ["status", "kind"]

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return Organization.objects.none()
        return selectors.organizations_visible_to(user=self.request.user).order_by("id")

    def get_serializer_context(self):
        context = super().get_serializer_context()
        if self.request.user.is_authenticated:
            context["roles"] = dict(
                Membership.objects.for_user(self.request.user).values_list("organization_id", "role")
            )
        return context

    def _org(self, pk: str, *, staff_action: bool = False) -> Organization:
        return access_organization(Actor.of(self.request, staff_action=staff_action), pk)

    def _actor(self, org: Organization) -> Membership:
        actor = org.memberships.filter(user=self.request.user).first()
        if actor is None:  # staff looking at someone else's organisation
            raise NotAllowed("You are not a member of this organization.")
        return actor

    def retrieve(self, request: Request, pk: str) -> Response:
        return Response(self.get_serializer(self._org(pk)).data)

    @extend_schema(request=OrganizationInput, responses={201: OrganizationOutput})
    def create(self, request: Request) -> Response:
        data = OrganizationInput(data=request.data)
        data.is_valid(raise_exception=True)
        org = services.organization_request(user=request.user, **data.validated_data)
        return Response(OrganizationOutput(org, context={"roles": {org.pk: "owner"}}).data, status=201)

    @extend_schema(request=None, responses={200: OrganizationOutput})
    @action(detail=True, methods=["post"])
    def approve(self, request: Request, pk: str) -> Response:
        org = self._org(pk, staff_action=True)
        IsStaff().has_permission(request, self) or self.permission_denied(request, IsStaff.message)
        org = services.organization_approve(org=org, staff=request.user)
        return Response(self.get_serializer(org).data)

    @extend_schema(methods=["GET"], responses={200: MembershipOutput(many=True)})
    @extend_schema(methods=["POST"], request=MembershipInput, responses={201: MembershipOutput})
    @action(detail=True, methods=["get", "post"], serializer_class=MembershipOutput)
    def members(self, request: Request, pk: str) -> Response:
        org = self._org(pk)
        if request.method == "GET":
            page = self.paginate_queryset(org.memberships.select_related("user").order_by("id"))
            return self.get_paginated_response(MembershipOutput(page, many=True).data)
        data = MembershipInput(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_add(org=org, actor=self._actor(org), **data.validated_data)
        return Response(MembershipOutput(membership).data, status=201)

    @extend_schema(methods=["PATCH"], request=MembershipUpdate, responses={200: MembershipOutput})
    @extend_schema(methods=["DELETE"], responses={204: None})
    @action(
        detail=True,
        methods=["patch", "delete"],
        url_path=r"members/(?P<member_id>[0-9]+)",
        serializer_class=MembershipOutput,
    )
    def member(self, request: Request, pk: str, member_id: str) -> Response:
        org = self._org(pk)
        membership = access_one(org.memberships.select_related("user"), member_id, "member")
        actor = self._actor(org)
        if request.method == "DELETE":
            services.membership_remove(membership=membership, actor=actor)
            return Response(status=204)
        data = MembershipUpdate(data=request.data)
        data.is_valid(raise_exception=True)
        membership = services.membership_update(membership=membership, actor=actor, role=data.validated_data["role"])
        return Response(MembershipOutput(membership).data)


class OrgEventsApi(OrgAPIView, generics.ListAPIView):
    """The organisation's log, newest first, with cursor paging (`next` / `previous` links). Any member reads it;
    another organisation's events are never listed."""

    queryset = OrgEvent.objects.none()  # for the schema only: reads go through accounts.org_log.events_of
    serializer_class = OrgEventOutput
    permission_classes = [IsAuthenticated, HasOrganization]
    pagination_class = NewestFirstCursor
    filter_backends: list = []

    def get_queryset(self):
        if getattr(self, "swagger_fake_view", False):
            return OrgEvent.objects.none()
        return org_log.events_of(self.request.org)
