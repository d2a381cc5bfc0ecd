def test_register_then_token_then_list_orgs(anon):
    r = anon.post(
        "/api/v1/auth/register/",
        {
            "email": "New@Example.com",
            "password": "a very good passphrase",
            "organization": {"name": "N", "kind": "provider"},
        },
        format="json",
    )
    assert r.status_code == 201, r.json()
    assert r.json()["organization"]["status"] == "pending"
    r = anon.post(
        "/api/v1/auth/token/",
        {"email": "new@example.com", "password": "a very good passphrase"},
        format="json",
    )
    assert r.status_code == 200, r.json()
    anon.credentials(HTTP_AUTHORIZATION="Bearer " + r.json()["token"])
    r = anon.get("/api/v1/orgs/")
    assert r.status_code == 200
    assert [o["name"] for o in r.json()["results"]] == ["N"]
