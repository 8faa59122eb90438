"""The OpenAPI document, completed: every status code a route answers is declared with the one
error body the app sends (``{"detail": "<sentence>"}``, or FastAPI's list of field errors for a
malformed request), and the streamed upload routes declare their multipart body.

FastAPI only knows what a route's signature says; the routes here also answer from their
dependencies (401 without a token, 403 for viewers and cross-site requests), from
``BodyLimitMiddleware`` (413) and from the ``LabError`` handler: the rules are in
:func:`_codes`, the rest in ``EXTRA``. :func:`install_openapi`
replaces ``app.openapi`` with a cached, completed document.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

ERROR_REF = {"$ref": "#/components/schemas/Error"}
ERROR_SCHEMA = {
    "title": "Error",
    "type": "object",
    "required": ["detail"],
    "properties": {
        "detail": {
            "title": "Detail",
            "anyOf": [
                {"type": "string", "description": "one sentence saying what to change"},
                {"type": "array", "items": {"$ref": "#/components/schemas/ValidationError"}},
            ],
        }
    },
}
REASONS = {
    400: "the request body cannot be read (not JSON, not multipart, no file, an unsafe archive)",
    401: "no valid token or session",
    403: "not allowed for this user (role, owner, or a cross-site request)",
    404: "no such item",
    409: "the item's state does not allow this",
    410: "the item's file is gone from the artifact store",
    413: "the body or the upload is over this server's size limits",
    415: "the file is not in a format this server reads",
    422: "a value is invalid or over one of this server's limits",
    429: "too many queued runs for this user",
}
# What a route's signature does not show: answers from the store, the queue and the uploads.
UPLOAD_FIELDS = {
    ("post", "/api/models"): {
        "name": "a name (default: the file name)",
        "arch": "built-in architecture of a weights-only file",
        "input_shape": "one sample's shape, e.g. 1,8,8",
        "num_classes": "expected number of classes",
    },
    ("post", "/api/datasets"): {"name": "a name (default: the file name)"},
}
PUBLIC = {"/api/health"}
ADMIN_ONLY = {"/api/users"}
EXTRA = {
    ("post", "/api/users"): {409},
    ("patch", "/api/users/{user_id}"): {409},
    ("post", "/api/models"): {415},
    ("delete", "/api/models/{model_id}"): {409},
    ("get", "/api/models/{model_id}/file"): {410},
    ("post", "/api/datasets"): {415},
    ("delete", "/api/datasets/{dataset_id}"): {409},
    ("post", "/api/runs"): {429},
    ("delete", "/api/runs/{run_id}"): {409},
    ("post", "/api/runs/{run_id}/cancel"): {409},
    ("post", "/api/runs/{run_id}/resume"): {409, 429},
    ("post", "/api/sweeps"): {429},
}


def install_openapi(app: FastAPI) -> None:
    """Serve the completed document from ``app.openapi()`` (built once)."""

    def openapi() -> dict:
        if app.openapi_schema is None:
            app.openapi_schema = complete(_base(app))
        return app.openapi_schema

    app.openapi = openapi


def _base(app: FastAPI) -> dict:
    return get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )


def complete(doc: dict) -> dict:
    """Declare every answer of every operation in ``doc``."""
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["Error"] = ERROR_SCHEMA
    schemas.pop("HTTPValidationError", None)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            key = (method, path)
            if key in UPLOAD_FIELDS:
                op["requestBody"] = _multipart(UPLOAD_FIELDS[key])
            codes = _codes(path, method, op) | EXTRA.get(key, set())
            responses = op.setdefault("responses", {})
            for code in sorted(codes):
                responses[str(code)] = {
                    "description": REASONS[code],
                    "content": {"application/json": {"schema": ERROR_REF}},
                }
    return doc


def _codes(path: str, method: str, op: dict) -> set[int]:
    """401 without a token; 403 for viewers and cross-site writes; 404 and 422 for ids; 422
    for parameters; 413 and 422 for bodies."""
    codes: set[int] = set()
    if path not in PUBLIC:
        codes.add(401)
        if method != "get" or path in ADMIN_ONLY:
            codes.add(403)
    places = {p["in"] for p in op.get("parameters", [])}
    if "path" in places:
        codes |= {404, 422}
    if places - {"path"}:
        codes.add(422)
    if "requestBody" in op:
        codes |= {400, 413, 422}  # 400: a body that is not JSON
    return codes


def _multipart(fields: dict[str, str]) -> dict:
    properties = {"file": {"type": "string", "format": "binary", "description": "the file"}}
    properties |= {name: {"type": "string", "description": text} for name, text in fields.items()}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {"type": "object", "required": ["file"], "properties": properties}
            }
        },
    }
