"""One error hierarchy for PruneLab; one handler in ``app.main`` maps it to JSON.

    LabError (500)
    ├── BadRequest (400)
    ├── Unauthorized (401)
    ├── Forbidden (403)
    ├── NotFound (404)
    ├── Conflict (409)
    ├── TooLarge (413)
    ├── UnsupportedMedia (415)
    └── Invalid (422)

Every message is one sentence a user can act on. The engine (``app.pruning``)
raises plain ``ValueError``; the web layer turns those into 422.
"""

from __future__ import annotations


class LabError(Exception):
    status_code = 500

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code


class BadRequest(LabError):
    status_code = 400


class Unauthorized(LabError):
    status_code = 401


class Forbidden(LabError):
    status_code = 403


class NotFound(LabError):
    status_code = 404


class Conflict(LabError):
    status_code = 409


class TooLarge(LabError):
    status_code = 413


class UnsupportedMedia(LabError):
    status_code = 415


class Invalid(LabError):
    status_code = 422
