"""The OpenAPI schema of the lease routes says what they take and give (issue 19): `POST /api/v1/leases/` takes a
`workload` (with its `volumes`), and create, end, stop, start and resize answer the lease with its workloads."""

from __future__ import annotations

import jsonschema
import pytest

from scheduler.serializers import LeaseInput
from workloads.serializers import LeaseWithWorkloadInput, VolumeMountInput, WorkloadInput


@pytest.fixture
def openapi(anon) -> dict:
    response = anon.get("/api/schema/", {"format": "json"})
    assert response.status_code == 200
    return response.json()


def _resolve(node: dict, openapi: dict) -> dict:
    while "$ref" in node or "allOf" in node:
        node = node["allOf"][0] if "allOf" in node else node
        if "$ref" in node:
            node = openapi["components"]["schemas"][node["$ref"].rsplit("/", 1)[1]]
    return node


def _request(openapi: dict, path: str, method: str = "post") -> dict:
    content = openapi["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
    return _resolve(content, openapi)


def _writable(serializer) -> set[str]:
    return {name for name, field in serializer.fields.items() if not field.read_only}


def test_the_lease_create_schema_lists_every_field_the_api_accepts_down_to_the_volumes(openapi):
    body = _request(openapi, "/api/v1/leases/")
    assert set(body["properties"]) == _writable(LeaseWithWorkloadInput()) == _writable(LeaseInput()) | {"workload"}
    workload = _resolve(body["properties"]["workload"], openapi)
    assert set(workload["properties"]) == _writable(WorkloadInput())
    assert {"image", "template", "ssh_keys", "volumes", "access"} <= set(workload["properties"])
    mount = _resolve(workload["properties"]["volumes"]["items"], openapi)
    assert set(mount["properties"]) == _writable(VolumeMountInput()) == {"volume", "path"}
    assert set(mount["required"]) == {"volume", "path"}
    assert body["properties"]["workload"].get("nullable") is True


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/api/v1/leases/", "201"),
        ("/api/v1/leases/{id}/end/", "200"),
        ("/api/v1/leases/{id}/stop/", "200"),
        ("/api/v1/leases/{id}/start/", "200"),
        ("/api/v1/leases/{id}/resize/", "200"),
    ],
)
def test_lease_verbs_answer_the_lease_with_its_workloads(openapi, path, status):
    content = openapi["paths"][path]["post"]["responses"][status]["content"]["application/json"]["schema"]
    assert {"workload", "workloads", "state", "gpus"} <= set(_resolve(content, openapi)["properties"])


def test_the_schema_keeps_the_idempotency_key_and_the_resize_body(openapi):
    for path in ("/api/v1/leases/", "/api/v1/leases/{id}/end/", "/api/v1/leases/{id}/resize/"):
        names = {p["name"] for p in openapi["paths"][path]["post"].get("parameters", [])}
        assert "Idempotency-Key" in names, path
    assert set(_request(openapi, "/api/v1/leases/{id}/resize/")["properties"]) == {"gpu_count"}


def _closed(node):
    """The JSON Schema with no property beyond those it names (the API's serializers refuse unknown fields)."""
    if isinstance(node, list):
        return [_closed(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {key: _closed(value) for key, value in node.items()}
    if "properties" in out:
        out["additionalProperties"] = False
    return out


def test_a_body_with_a_workload_and_a_volume_matches_the_schema_and_is_taken_by_the_api(openapi, alice, bob, box):
    from tests.cli.conftest import _json_schema
    from tests.workloads.test_volumes import ready_made
    from tests.workloads.test_volumes_api import lend_storage

    lend_storage(bob, box)
    vid = ready_made(alice, box)
    body = {
        "plan": "card_hour",
        "server": box.server_id,
        "gpu_count": 1,
        "workload": {"image": "ubuntu:24.04", "ports": [22], "volumes": [{"volume": vid, "path": "/data"}]},
    }
    content = openapi["paths"]["/api/v1/leases/"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    schema = _closed(_json_schema(content, openapi["components"]["schemas"]))
    jsonschema.validate(body, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({**body, "workload": {**body["workload"], "volume": vid}}, schema)
    response = alice.api.post("/api/v1/leases/", body, format="json")
    assert response.status_code == 201, response.json()
    assert response.json()["workload"]["volumes"] == [{"volume": vid, "path": "/data"}]
    content = openapi["paths"]["/api/v1/leases/"]["post"]["responses"]["201"]["content"]["application/json"]["schema"]
    jsonschema.validate(response.json(), _json_schema(content, openapi["components"]["schemas"]))
