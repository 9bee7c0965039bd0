"""The JSON envelopes of the contract's answers, as bytes for the HTTP shim and as results for the gateway."""

from __future__ import annotations

import json
from typing import Any

from system.errors import ERROR_STATUS, RETRYABLE_CODES

JSON = "application/json"

_dumps = json.JSONEncoder(separators=(",", ":")).encode


def success_body(request_id: str, service: str, raw_result: bytes, duration_ms: float) -> bytes:
    """``{"request_id", "service", "status": "success", "result", "duration_ms"}``.

    ``raw_result`` is the guard's answer as it arrived (already checked to be JSON): it is placed in the envelope
    as is, not decoded and encoded again.
    """
    return b"".join((
        b'{"request_id":', _dumps(request_id).encode(),
        b',"service":', _dumps(service).encode(),
        b',"status":"success","result":', raw_result,
        b',"duration_ms":', _dumps(round(duration_ms, 3)).encode(), b"}",
    ))


def degraded_body(request_id: str, service: str, code: str, message: str, duration_ms: float) -> bytes:
    """A fail-open guard failed: ``{"status": "success", "result": null, "degraded": true, "degraded_reason"}``."""
    return _dumps({"request_id": request_id, "service": service, "status": "success", "result": None,
                   "degraded": True, "degraded_reason": {"code": code, "message": message},
                   "duration_ms": round(duration_ms, 3)}).encode()


def error_body(request_id: str, service: str | None, code: str, message: str, raw_detail: bytes | None = None,
               ) -> bytes:
    """``{"request_id", "service", "status": "error", "error": {"code", "message"[, "detail"]}}``."""
    error = b'{"code":' + _dumps(code).encode() + b',"message":' + _dumps(message).encode()
    if raw_detail:
        error += b',"detail":' + raw_detail
    error += b"}"
    return b"".join((
        b'{"request_id":', _dumps(request_id).encode(),
        b',"service":', _dumps(service).encode(),
        b',"status":"error","error":', error, b"}",
    ))


def error_status(code: str, guard_status: int = 0) -> int:
    """The HTTP status for an error code; ``guard_rejected`` keeps the guard's own 4xx."""
    if code == "guard_rejected" and 400 <= guard_status < 500:
        return guard_status
    return ERROR_STATUS.get(code, 500)


def response_headers(request_id: str, code: str | None = None, retry_after: int | None = None) -> list[tuple[str, str]]:
    """Content-Type, X-Request-ID, and Retry-After for the codes that ask the caller to come back."""
    headers = [("Content-Type", JSON), ("X-Request-ID", request_id)]
    if code in RETRYABLE_CODES:
        headers.append(("Retry-After", str(max(1, retry_after or 1))))
    return headers


def json_body(value: Any) -> bytes:
    """Compact JSON bytes."""
    return _dumps(value).encode()
