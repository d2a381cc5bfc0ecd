"""GET|POST /api/v1/ssh-keys/, DELETE /api/v1/ssh-keys/{id}/: OpenSSH keys checked and fingerprinted as
`ssh-keygen -l` does; one user's keys are nobody else's."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed25519, rsa

from scheduler.models import Lease
from tests.conftest import make_persona
from tests.workloads.conftest import add_key, openssh_public_key, rent, template_id
from workloads.models import SshKey

SSH_KEYGEN = "/usr/bin/ssh-keygen" if os.path.exists("/usr/bin/ssh-keygen") else shutil.which("ssh-keygen")


def fingerprint_by_hand(public: str) -> str:
    """SHA256 of the key blob, base64 without padding: what `ssh-keygen -l` prints."""
    blob = base64.b64decode(public.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def fingerprint_by_ssh_keygen(public: str, tmp_path) -> str:
    path = tmp_path / "key.pub"
    path.write_text(public + "\n")
    out = subprocess.run([SSH_KEYGEN, "-l", "-f", str(path)], capture_output=True, text=True, check=True).stdout
    return re.search(r"SHA256:[A-Za-z0-9+/]+", out).group(0)


def post_key(persona, public: str, name: str = "k"):
    return persona.api.post("/api/v1/ssh-keys/", {"name": name, "public_key": public}, format="json")


@pytest.mark.parametrize(
    ("kind", "make", "bits"),
    [
        ("ssh-ed25519", ed25519.Ed25519PrivateKey.generate, 256),
        ("ecdsa-sha2-nistp256", lambda: ec.generate_private_key(ec.SECP256R1()), 256),
        ("ssh-rsa", lambda: rsa.generate_private_key(public_exponent=65537, key_size=2048), 2048),
    ],
)
def test_ed25519_ecdsa_and_rsa_2048_keys_are_accepted_with_the_fingerprint_ssh_keygen_prints(
    alice, tmp_path, kind, make, bits
):
    public = openssh_public_key(make(), "alice@laptop")
    response = post_key(alice, public, name="laptop")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["name"] == "laptop" and body["key_type"] == kind and body["bits"] == bits
    assert body["fingerprint"] == fingerprint_by_hand(public)
    if SSH_KEYGEN:
        assert body["fingerprint"] == fingerprint_by_ssh_keygen(public, tmp_path)
    listed = alice.api.get("/api/v1/ssh-keys/").json()
    assert [k["fingerprint"] for k in listed] == [body["fingerprint"]]
    assert alice.api.get(f"/api/v1/ssh-keys/{body['id']}/").json()["public_key"] == public


def test_the_key_comment_names_a_key_posted_without_a_name(alice):
    public = openssh_public_key(ed25519.Ed25519PrivateKey.generate(), "alice@workstation")
    response = alice.api.post("/api/v1/ssh-keys/", {"public_key": public}, format="json")
    assert response.status_code == 201
    assert response.json()["name"] == "alice@workstation"


def _changed_byte(public: str, at: int) -> str:
    kind, data, *rest = public.split()
    blob = bytearray(base64.b64decode(data))
    blob[at] ^= 0x01
    return " ".join([kind, base64.b64encode(bytes(blob)).decode(), *rest])


def _ecdsa() -> str:
    return openssh_public_key(ec.derive_private_key(123456789, ec.SECP256R1()))


def _ed25519() -> str:
    return openssh_public_key(ed25519.Ed25519PrivateKey.from_private_bytes(bytes(range(32))))


def _private_key() -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH, serialization.NoEncryption()
    )
    return pem.decode()


# Weak keys on purpose: they must be refused.
BAD_KEYS = {
    "rsa 1024": lambda: openssh_public_key(rsa.generate_private_key(public_exponent=65537, key_size=1024)),  # noqa: S505
    "dsa": lambda: openssh_public_key(dsa.generate_private_key(key_size=1024)),  # noqa: S505
    "private key": _private_key,
    "garbage": lambda: "hello world, this is not a key",
    "type alone": lambda: "ssh-ed25519",
    "two lines": lambda: _ed25519() + "\n" + openssh_public_key(ed25519.Ed25519PrivateKey.generate()),
    # A byte of the point changed: it is no longer on the curve.
    "changed point byte": lambda: _changed_byte(_ecdsa(), -5),
    # A byte of the type name inside the blob changed: the blob no longer says ssh-ed25519.
    "changed type byte": lambda: _changed_byte(_ed25519(), 6),
    "bad base64": lambda: _ed25519()[:-3] + "!!!",
    "the type of another key": lambda: "ssh-rsa " + _ed25519().split()[1],
}


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")
@pytest.mark.parametrize("case", sorted(BAD_KEYS))
def test_anything_but_a_sound_public_key_is_a_400_on_public_key(alice, case):
    response = post_key(alice, BAD_KEYS[case]())
    assert response.status_code == 400, (case, response.content)
    error = response.json()["error"]
    assert "public_key" in error["fields"], (case, error)
    assert not SshKey.objects.exists()


def test_the_same_key_twice_is_a_400_and_another_user_may_add_it(alice, charlie):
    public = openssh_public_key(ed25519.Ed25519PrivateKey.generate(), "shared")
    assert post_key(alice, public).status_code == 201
    again = post_key(alice, public.replace("shared", "renamed"), name="other name")
    assert again.status_code == 400
    assert "public_key" in again.json()["error"]["fields"]
    assert post_key(charlie, public).status_code == 201
    assert SshKey.objects.filter(user=alice.user).count() == 1


def test_another_users_key_is_404_to_read_and_delete_even_in_the_same_organisation(alice, charlie):
    key = add_key(alice)
    colleague = make_persona(alice.org, role="admin")
    for stranger in (charlie, colleague):
        assert stranger.api.get(f"/api/v1/ssh-keys/{key['id']}/").status_code == 404
        response = stranger.api.delete(f"/api/v1/ssh-keys/{key['id']}/")
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
        assert stranger.api.get("/api/v1/ssh-keys/").json() == []
    assert alice.api.get(f"/api/v1/ssh-keys/{key['id']}/").status_code == 200
    assert alice.api.delete(f"/api/v1/ssh-keys/{key['id']}/").status_code == 204
    assert alice.api.get(f"/api/v1/ssh-keys/{key['id']}/").status_code == 404
    assert alice.api.get("/api/v1/ssh-keys/nonsense/").status_code == 404


def test_keys_need_a_signed_in_user(anon):
    assert anon.get("/api/v1/ssh-keys/").status_code == 401
    public = openssh_public_key(ed25519.Ed25519PrivateKey.generate())
    assert anon.post("/api/v1/ssh-keys/", {"public_key": public}, format="json").status_code == 401


def test_a_lease_cannot_name_another_users_key(alice, charlie, box):
    charlies = add_key(charlie)
    response = rent(alice, gpu_count=1, workload={"template": template_id("cuda-ssh"), "ssh_keys": [charlies["id"]]})
    assert response.status_code == 400, response.content
    assert "ssh_keys" in response.json()["error"]["fields"]["workload"]
    assert not Lease.objects.exists()
