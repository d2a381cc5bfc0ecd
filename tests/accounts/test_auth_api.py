from accounts.models import ApiKey, Organization, User

GOOD_PASSWORD = "a very good passphrase"


def register(client, email="new@example.com", kind="customer", **extra):
    body = {"email": email, "password": GOOD_PASSWORD, "organization": {"name": "New Co", "kind": kind}}
    body.update(extra)
    return client.post("/api/v1/auth/register/", body, format="json")


def test_registering_creates_user_org_and_a_token_that_works_once_the_email_is_verified(anon):
    from allauth.account.models import EmailAddress

    response = register(anon, email="New@Example.com")
    assert response.status_code == 201
    body = response.json()
    assert body["user"]["email"] == "new@example.com"
    assert body["organization"] == {
        **body["organization"],
        "kind": "customer",
        "status": "active",
        "role": "owner",
    }
    assert body["email_verified"] is False
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {body['token']}")
    assert (
        anon.get("/api/v1/orgs/").json()["error"]["code"] == "email_unverified"
    )  # tests/accounts/test_email_verification.py
    EmailAddress.objects.filter(email="new@example.com").update(verified=True)
    orgs = anon.get("/api/v1/orgs/").json()["results"]
    assert [org["name"] for org in orgs] == ["New Co"]


def test_a_provider_starts_pending(anon):
    body = register(anon, kind="provider").json()
    assert body["organization"]["status"] == "pending"


def test_registering_an_email_twice_creates_nothing_and_does_not_say_so(anon):
    # The same answer as for a new address (tests/security/test_enumeration.py); the owner is mailed instead.
    first = register(anon)
    assert first.status_code == 201
    response = register(anon, email="NEW@example.com")
    assert response.status_code == 201
    assert response.json().keys() == first.json().keys()
    assert User.objects.count() == 1
    assert Organization.objects.count() == 1
    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {response.json()['token']}")
    assert anon.get("/api/v1/orgs/").status_code == 401


def test_a_weak_password_is_a_field_error(anon):
    response = anon.post(
        "/api/v1/auth/register/",
        {"email": "x@example.com", "password": "123", "organization": {"name": "X", "kind": "customer"}},
        format="json",
    )
    assert response.status_code == 400
    assert "password" in response.json()["error"]["fields"]
    assert not User.objects.exists()


def test_token_with_right_password_and_refused_with_wrong_one(anon, alice):
    good = anon.post("/api/v1/auth/token/", {"email": "ALICE@example.com", "password": "correct horse battery staple"})
    assert good.status_code == 200
    assert good.json()["token"].startswith("sl_")
    bad = anon.post("/api/v1/auth/token/", {"email": "alice@example.com", "password": "nope"}, format="json")
    assert bad.status_code == 401
    assert bad.json()["error"]["code"] == "authentication_failed"


def test_keys_are_stored_hashed_listed_without_secret_and_revocable(alice, anon):
    created = alice.api.post("/api/v1/auth/keys/", {"name": "ci"}, format="json")
    assert created.status_code == 201
    token = created.json()["token"]
    key = ApiKey.objects.get(pk=created.json()["id"])
    secret = token.split("_", 2)[2]  # the secret is URL-safe base64 and may itself hold "_"
    assert token not in key.key_hash and secret not in str(ApiKey.objects.values().get(pk=key.pk))
    listing = alice.api.get("/api/v1/auth/keys/").json()["results"]
    assert {"ci", "test"} <= {k["name"] for k in listing}
    assert all("token" not in k and "key_hash" not in k for k in listing)

    anon.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    assert anon.get("/api/v1/orgs/").status_code == 200
    assert alice.api.delete(f"/api/v1/auth/keys/{key.pk}/").status_code == 200
    refused = anon.get("/api/v1/orgs/")
    assert refused.status_code == 401
    assert refused.json()["error"]["code"] == "authentication_failed"


def test_a_malformed_or_unknown_token_is_401_json(anon):
    for header in ("Bearer nonsense", "Bearer sl_0123456789ab_wrongsecret"):
        anon.credentials(HTTP_AUTHORIZATION=header)
        response = anon.get("/api/v1/orgs/")
        assert response.status_code == 401
        assert response["WWW-Authenticate"] == "Bearer"


def test_no_credentials_is_401_json(anon):
    response = anon.get("/api/v1/orgs/")
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_x_organization_picks_among_the_users_orgs(alice):
    second = alice.api.post("/api/v1/orgs/", {"name": "Alice GPU", "kind": "provider"}, format="json").json()
    assert second["status"] == "pending"
    alice.api.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.token}", HTTP_X_ORGANIZATION=str(second["id"]))
    assert alice.api.get("/api/v1/auth/keys/").status_code == 200


def test_x_organization_of_another_tenant_is_404(alice, charlie):
    alice.api.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.token}", HTTP_X_ORGANIZATION=str(charlie.org.pk))
    response = alice.api.get("/api/v1/orgs/")
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "organization_not_found"
    alice.api.credentials(HTTP_AUTHORIZATION=f"Bearer {alice.token}", HTTP_X_ORGANIZATION="not-a-number")
    assert alice.api.get("/api/v1/orgs/").status_code == 404
