"""Issue 14, item 7 (the document): uploads declare their multipart body, error answers are
declared with the body the app sends, a one-sentence 422 included."""

from __future__ import annotations

import jsonschema
from fastapi.testclient import TestClient

from app.config import Settings
from app.main import create_app


def _doc() -> dict:
    return create_app(Settings(data_dir="/tmp/prunelab-schema-only"), migrate=False).openapi()


def test_upload_routes_declare_their_multipart_body() -> None:
    paths = _doc()["paths"]
    for path, fields in (("/api/models", {"file", "name", "arch"}), ("/api/datasets", {"file"})):
        body = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert fields <= set(body["properties"]) and body["required"] == ["file"]
        assert body["properties"]["file"]["format"] == "binary"


def test_every_signed_in_operation_declares_401_and_its_error_body() -> None:
    doc = _doc()
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if path != "/api/health":
                assert "401" in op["responses"], (method, path)
            for code, answer in op["responses"].items():
                if code >= "400":
                    schema = answer["content"]["application/json"]["schema"]
                    assert schema == {"$ref": "#/components/schemas/Error"}, (method, path, code)


def test_a_one_sentence_422_matches_the_declared_schema(client: TestClient, member_headers) -> None:
    doc = _doc()
    r = client.post(
        "/api/runs", json={"model_id": 999, "dataset_id": "digits"}, headers=member_headers
    )
    assert r.status_code == 422 and isinstance(r.json()["detail"], str), r.text
    declared = doc["paths"]["/api/runs"]["post"]["responses"]
    assert str(r.status_code) in declared
    schema = {"$ref": "#/components/schemas/Error", "components": doc["components"]}
    jsonschema.validate(r.json(), schema)
