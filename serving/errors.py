"""Errors with TF Serving's gRPC codes; the REST layer turns them into `{"error": ...}` and a status."""

from __future__ import annotations

# TF Serving's REST handler maps the gRPC status of a failed call to these HTTP codes.
HTTP_STATUS = {"INVALID_ARGUMENT": 400, "FAILED_PRECONDITION": 400, "OUT_OF_RANGE": 400, "NOT_FOUND": 404,
               "RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "DEADLINE_EXCEEDED": 504, "INTERNAL": 500}


class ServingError(Exception):
    """A request that cannot be answered; `str(error)` is the one-line message the client sees."""

    code = "INTERNAL"

    @property
    def status(self) -> int:
        return HTTP_STATUS[self.code]


class InvalidArgument(ServingError):
    code = "INVALID_ARGUMENT"


class NotFound(ServingError):
    code = "NOT_FOUND"


class Unavailable(ServingError):
    code = "UNAVAILABLE"


class DeadlineExceeded(ServingError):
    code = "DEADLINE_EXCEEDED"
