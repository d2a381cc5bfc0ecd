"""`suanli login / logout / whoami / profiles / orgs`, the config file's mode, --org and --api-url, exit codes."""

from __future__ import annotations

import json
import re
import stat

from tests.cli.conftest import assert_items_valid, assert_valid, response_schema
from tests.factories import PASSWORD, MembershipFactory, OrganizationFactory


def test_login_with_email_and_password_keeps_a_working_token_in_a_0600_file(suanli, alice, openapi):
    run = suanli.ok("login", "--email", "alice@example.com", "--password-stdin", "--json", input=PASSWORD + "\n")
    answer = run.json()
    assert answer["organizations"] == [{"id": alice.org.pk, "name": "Alice Labs", "role": "owner"}]
    path = suanli.home / "config" / "config.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    token = stored["profiles"]["default"]["token"]
    assert token.startswith("sl_") and token != alice.token  # a key of its own
    assert alice.user.api_keys.filter(revoked_at__isnull=True).count() == 2
    orgs = suanli.ok("orgs", "list", "--json").json()
    assert [o["name"] for o in orgs] == ["Alice Labs"]
    assert_items_valid(orgs, openapi, "/api/v1/orgs/")
    table = suanli.ok("whoami").out
    assert "Alice Labs" in table and "owner" in table


def test_a_wrong_password_is_exit_1_with_the_api_code_and_nothing_is_stored(suanli, alice):
    run = suanli("login", "--email", "alice@example.com", "--password-stdin", input="not it\n")
    assert run.code == 1
    assert "unauthenticated" in run.err or "401" in run.err, run.err
    assert not (suanli.home / "config" / "config.json").exists()


def test_logout_revokes_the_key_and_forgets_it(suanli, alice):
    suanli.ok("login", "--email", "alice@example.com", "--password-stdin", input=PASSWORD + "\n")
    suanli.ok("logout")
    assert alice.user.api_keys.filter(revoked_at__isnull=True).count() == 1  # the fixture's own is left
    run = suanli("whoami")
    assert run.code == 1 and "suanli login" in run.err


def test_org_picks_the_organisation_by_id_name_or_environment(suanli, alice, openapi):
    other = OrganizationFactory(name="Alice Two")
    MembershipFactory(organization=other, user=alice.user)
    suanli.ok("login", "--api-key", "-", input=alice.token + "\n")
    for how in (["--org", str(other.pk)], ["--org", "alice two"]):
        assert suanli.ok("whoami", "--json", *how).json()["org"] == str(other.pk)
    assert suanli.ok("whoami", "--json", env={"SUANLI_ORG": str(other.pk)}).json()["org"] == str(other.pk)
    run = suanli("whoami", "--org", "Nobody Inc")
    assert run.code == 3, run.err  # not found


def test_profiles_keep_several_sites_apart(suanli, alice, bob):
    suanli.ok("login", "--api-key", "-", input=alice.token + "\n")
    suanli.ok("--profile", "bob", "login", "--api-key", "-", input=bob.token + "\n")
    rows = suanli.ok("profiles", "list", "--json").json()
    assert [(r["name"], r["default"], r["logged_in"]) for r in rows] == [("bob", False, True), ("default", True, True)]
    assert suanli.ok("whoami", "--json").json()["organizations"][0]["name"] == "Alice Labs"
    assert suanli.ok("whoami", "--json", "--profile", "bob").json()["organizations"][0]["name"] == "Bob IDC"
    suanli.ok("profiles", "use", "bob")
    assert suanli.ok("whoami", "--json").json()["organizations"][0]["name"] == "Bob IDC"
    assert suanli("whoami", "--profile", "nope").code == 1


def test_api_url_option_wins_over_the_environment_and_an_unreachable_site_is_exit_1(suanli, alice):
    suanli.ok("login", "--api-key", "-", input=alice.token + "\n")
    run = suanli("whoami", "--api-url", "http://127.0.0.1:9")
    assert run.code == 1 and "unreachable" in run.err


def test_usage_mistakes_are_exit_2(suanli):
    assert suanli("leases", "resize").code == 2
    assert suanli("no-such-command").code == 2


def test_register_then_verify_the_address_from_the_mailed_link(suanli, openapi):
    from django.core import mail

    run = suanli.ok(
        "register",
        "--email",
        "new@example.com",
        "--org-name",
        "New Lab",
        "--password-stdin",
        "--json",
        input="a-long-password-1\n",
    )
    answer = run.json()
    assert "token" not in answer  # kept in the config file, not printed
    schema = response_schema(openapi, "/api/v1/auth/register/", "post", "201")
    schema["required"] = [name for name in schema.get("required", []) if name != "token"]
    assert_valid(answer, schema)
    assert answer["organization"]["name"] == "New Lab" and answer["email_verified"] is False
    stored = json.loads((suanli.home / "config" / "config.json").read_text())["profiles"]["default"]
    assert stored["token"].startswith("sl_") and stored["email"] == "new@example.com"
    blocked = suanli("whoami")
    assert blocked.code == 1 and "email_unverified" in blocked.err
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", mail.outbox[-1].body)
    assert link, mail.outbox[-1].body
    assert suanli.ok("verify", link[0], "--json").json() == {"email_verified": True}
    assert suanli.ok("whoami", "--json").json()["organizations"][0]["name"] == "New Lab"
    assert suanli("verify", "not-a-key").code == 1


def test_profiles_set_points_a_profile_at_a_site_and_organisation(suanli, alice):
    suanli.ok("profiles", "set", "staging", "--site", "http://127.0.0.1:9/", "--organisation", "7")
    rows = {r["name"]: r for r in suanli.ok("profiles", "list", "--json").json()}
    assert rows["staging"]["api_url"] == "http://127.0.0.1:9" and rows["staging"]["org"] == "7"
    assert rows["staging"]["logged_in"] is False
    # The profile's site is used when neither --api-url nor SUANLI_API_URL says otherwise.
    run = suanli("offers", "search", "--profile", "staging", env={"SUANLI_API_URL": ""})
    assert run.code == 1 and "127.0.0.1:9" in run.err
