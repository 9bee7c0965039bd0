"""The project's exceptions and the contract's error codes with their HTTP statuses."""

from __future__ import annotations

# Error code -> HTTP status, as in shared/CONTRACT.md. ``guard_rejected`` takes the guard's own 4xx status.
ERROR_STATUS: dict[str, int] = {
    "invalid_request": 400,
    "invalid_payload": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "unknown_service": 404,
    "conflict": 409,
    "payload_too_large": 413,
    "rate_limited": 429,
    "guard_rejected": 400,
    "upstream_error": 502,
    "circuit_open": 503,
    "service_unavailable": 503,
    "overloaded": 503,
    "upstream_timeout": 504,
    "internal_error": 500,
}

# Codes that tell the caller to come back later; their responses carry Retry-After.
RETRYABLE_CODES = frozenset({"rate_limited", "circuit_open", "overloaded", "service_unavailable"})


class AeyonError(Exception):
    """Base class of the project's own exceptions."""


class ConfigError(AeyonError):
    """A setting is missing or wrong; the message names the variable."""


class RequestError(AeyonError):
    """A request the contract refuses: carries the error code and a message for the caller."""

    def __init__(self, code: str, message: str, *, request_id: str | None = None, service: str | None = None,
                 retry_after: int | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.request_id = request_id
        self.service = service
        self.retry_after = retry_after

    @property
    def http_status(self) -> int:
        """The HTTP status the contract gives this error's code."""
        return ERROR_STATUS[self.code]


class GatewayError(AeyonError):
    """The Python gateway could not reach or talk to the orchestrator."""
