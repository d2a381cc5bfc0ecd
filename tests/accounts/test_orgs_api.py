from accounts.models import Membership, Organization
from tests.conftest import make_persona
from tests.factories import ProviderFactory, UserFactory


def test_staff_approve_a_pending_provider(staff):
    pending = ProviderFactory(status="pending")
    response = staff.api.post(f"/api/v1/orgs/{pending.pk}/approve/")
    assert response.status_code == 200
    assert response.json()["status"] == "active"
    pending.refresh_from_db()
    assert pending.approved_by == staff.user and pending.approved_at is not None


def test_approving_twice_is_harmless_and_a_customer_cannot_be_approved(staff, alice):
    pending = ProviderFactory(status="pending")
    staff.api.post(f"/api/v1/orgs/{pending.pk}/approve/")
    assert staff.api.post(f"/api/v1/orgs/{pending.pk}/approve/").status_code == 200
    response = staff.api.post(f"/api/v1/orgs/{alice.org.pk}/approve/")
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "invalid_state"


def test_a_member_cannot_approve_their_own_pending_provider():
    persona = make_persona(ProviderFactory(status="pending"))
    response = persona.api.post(f"/api/v1/orgs/{persona.org.pk}/approve/")
    assert response.status_code == 403
    persona.org.refresh_from_db()
    assert persona.org.status == "pending"


def test_staff_list_pending_providers(staff):
    ProviderFactory(status="pending", name="Waiting IDC")
    names = [o["name"] for o in staff.api.get("/api/v1/orgs/?status=pending").json()["results"]]
    assert names == ["Waiting IDC"]


def test_owner_adds_a_member_and_lists_members(alice):
    colleague = UserFactory(email="colleague@example.com")
    response = alice.api.post(
        f"/api/v1/orgs/{alice.org.pk}/members/",
        {"email": "Colleague@example.com", "role": "billing"},
        format="json",
    )
    assert response.status_code == 201
    assert response.json()["role"] == "billing"
    members = alice.api.get(f"/api/v1/orgs/{alice.org.pk}/members/").json()["results"]
    assert {m["email"] for m in members} == {"alice@example.com", colleague.email}
    again = alice.api.post(f"/api/v1/orgs/{alice.org.pk}/members/", {"email": colleague.email}, format="json")
    assert again.status_code == 409


def test_a_plain_member_cannot_add_members_or_make_owners(alice):
    member = make_persona(alice.org, role="member")
    UserFactory(email="someone@example.com")
    response = member.api.post(f"/api/v1/orgs/{alice.org.pk}/members/", {"email": "someone@example.com"})
    assert response.status_code == 403
    admin = make_persona(alice.org, role="admin")
    response = admin.api.post(
        f"/api/v1/orgs/{alice.org.pk}/members/", {"email": "someone@example.com", "role": "owner"}
    )
    assert response.status_code == 403
    assert Membership.objects.filter(organization=alice.org).count() == 3


def test_the_last_owner_cannot_be_demoted_or_removed(alice):
    response = alice.api.patch(
        f"/api/v1/orgs/{alice.org.pk}/members/{alice.membership.pk}/", {"role": "member"}, format="json"
    )
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "last_owner"
    assert alice.api.delete(f"/api/v1/orgs/{alice.org.pk}/members/{alice.membership.pk}/").status_code == 409
    alice.membership.refresh_from_db()
    assert alice.membership.role == "owner"


def test_an_owner_changes_a_role_and_removes_a_member(alice):
    member = make_persona(alice.org, role="member")
    url = f"/api/v1/orgs/{alice.org.pk}/members/{member.membership.pk}/"
    assert alice.api.patch(url, {"role": "admin"}, format="json").json()["role"] == "admin"
    assert alice.api.delete(url).status_code == 204
    assert not Membership.objects.filter(pk=member.membership.pk).exists()


def test_creating_an_org_makes_the_caller_its_owner(alice):
    body = alice.api.post("/api/v1/orgs/", {"name": "Side", "kind": "customer", "currency": "CNY"}).json()
    assert body["role"] == "owner" and body["currency"] == "CNY"
    assert Organization.objects.get(pk=body["id"]).memberships.get().user == alice.user
