"""GET|POST /api/v1/templates/: the public catalogue for everyone, an organisation's own templates for its members."""

from __future__ import annotations

from scheduler.models import Lease
from tests.conftest import make_persona
from tests.workloads.conftest import rent

PUBLIC = {"pytorch-jupyter", "vllm", "cuda-ssh"}


def slugs(response) -> set[str]:
    assert response.status_code == 200, response.content
    return {t["slug"] for t in response.json()}


def test_anyone_sees_the_three_public_templates_with_both_descriptions(anon):
    response = anon.get("/api/v1/templates/")
    assert slugs(response) == PUBLIC
    for template in response.json():
        assert template["public"] is True
        assert template["image"] and template["description"] and template["description_zh"]
        assert 22 in template["ports"]
    pytorch = next(t for t in response.json() if t["slug"] == "pytorch-jupyter")
    assert pytorch["ports"] == [22, 8888] and pytorch["min_disk_gb"] == 50


def test_a_private_template_is_seen_by_its_organisations_members_only(alice, charlie, anon):
    body = {
        "name": "Our trainer",
        "image": "registry.example.com/alice/trainer:1.2",
        "command": ["python", "train.py"],
        "ports": [22, 6006],
        "env": {"EPOCHS": "3"},
        "min_disk_gb": 40,
        "description": "Alice Labs' training image",
    }
    created = alice.api.post("/api/v1/templates/", body, format="json")
    assert created.status_code == 201, created.content
    assert created.json()["public"] is False and created.json()["slug"] == "our-trainer"
    colleague = make_persona(alice.org, role="member")
    assert slugs(alice.api.get("/api/v1/templates/")) == PUBLIC | {"our-trainer"}
    assert slugs(colleague.api.get("/api/v1/templates/")) == PUBLIC | {"our-trainer"}
    assert slugs(charlie.api.get("/api/v1/templates/")) == PUBLIC
    assert slugs(anon.get("/api/v1/templates/")) == PUBLIC
    assert "trainer" not in charlie.api.get("/api/v1/templates/").content.decode()


def test_another_organisations_private_template_cannot_be_rented(alice, charlie, box):
    created = alice.api.post("/api/v1/templates/", {"name": "Mine", "image": "alice/mine:1"}, format="json")
    assert created.status_code == 201
    response = rent(charlie, gpu_count=1, workload={"template": created.json()["id"]})
    assert response.status_code == 400
    assert "template" in response.json()["error"]["fields"]["workload"]
    assert not Lease.objects.exists()
    assert rent(alice, gpu_count=1, workload={"template": created.json()["id"]}).status_code == 201


def test_a_template_needs_a_signed_in_member_who_may_operate_and_a_sound_image(alice, anon):
    assert anon.post("/api/v1/templates/", {"name": "x", "image": "x:1"}, format="json").status_code == 401
    billing = make_persona(alice.org, role="billing")
    assert billing.api.post("/api/v1/templates/", {"name": "x", "image": "x:1"}, format="json").status_code == 403
    bad = alice.api.post("/api/v1/templates/", {"name": "x", "image": "x:1; rm -rf /"}, format="json")
    assert bad.status_code == 400 and bad.json()["error"]["fields"]["image"] == ["Not a valid image reference."]
    number = alice.api.post("/api/v1/templates/", {"name": "x", "image": "x:1", "env": {"N": 5}}, format="json")
    assert number.status_code == 400 and "env" in number.json()["error"]["fields"]
    assert alice.api.post("/api/v1/templates/", {"name": "Twice", "image": "x:1"}, format="json").status_code == 201
    again = alice.api.post("/api/v1/templates/", {"name": "Twice", "image": "x:2"}, format="json")
    assert again.status_code == 400 and "name" in again.json()["error"]["fields"]
