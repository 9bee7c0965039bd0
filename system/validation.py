"""Request validation: the contract's checks on ``POST /v1/orchestrate`` bodies and ``Orchestrate`` messages.

Attack text inside a payload is never a reason to refuse it: the guards exist to inspect such text. Only the
request's shape is checked here.
"""

from __future__ import annotations

import json
import math
import re
import uuid
from typing import Any

import attrs

from system.errors import RequestError

MAX_BODY_BYTES = 10 * 1024 * 1024
MAX_PAYLOAD_DEPTH = 32
MAX_KEY_LENGTH = 1024
DEFAULT_TIMEOUT_S = 30.0
MAX_TIMEOUT_S = 300.0

REQUEST_ID = re.compile(r"[A-Za-z0-9_-]{1,100}")


@attrs.frozen
class OrchestrateRequest:
    """A request that passed validation."""

    request_id: str
    service: str
    payload: dict[str, Any]
    timeout: float
    client_id: str | None = None


def new_request_id() -> str:
    """A fresh request id (32 hex digits)."""
    return uuid.uuid4().hex


def valid_request_id(value: object) -> bool:
    """True for 1-100 characters of ``A-Z a-z 0-9 _ -``."""
    return isinstance(value, str) and REQUEST_ID.fullmatch(value) is not None


def _no_constants(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


def parse_json_object(raw: bytes, *, request_id: str | None = None) -> dict[str, Any]:
    """Decode a request body that must be one JSON object."""
    try:
        value = json.loads(raw, parse_constant=_no_constants)
    except RecursionError:
        raise RequestError("invalid_payload", "body nests too deeply", request_id=request_id) from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError("invalid_request", f"body is not valid JSON: {exc}", request_id=request_id) from None
    if not isinstance(value, dict):
        raise RequestError("invalid_request", "body must be a JSON object", request_id=request_id)
    return value


def parse_orchestrate_body(
    raw: bytes, *, header_request_id: str | None = None, client_id: str | None = None
) -> OrchestrateRequest:
    """Validate a ``POST /v1/orchestrate`` body; raise ``RequestError`` with the contract's code."""
    fallback_id = header_request_id if valid_request_id(header_request_id) else None
    body = parse_json_object(raw, request_id=fallback_id)
    return validate_orchestrate(
        body.get("request_id"),
        body.get("service"),
        body.get("payload"),
        body.get("timeout"),
        client_id,
        fallback_request_id=fallback_id,
        has_payload="payload" in body,
        from_json=True,
    )


def validate_orchestrate(
    request_id: object,
    service: object,
    payload: object,
    timeout: object,
    client_id: str | None = None,
    *,
    fallback_request_id: str | None = None,
    has_payload: bool = True,
    from_json: bool = False,
) -> OrchestrateRequest:
    """Validate the fields of an orchestration request, from HTTP or from an ``Orchestrate`` message."""
    if request_id is None:
        request_id = fallback_request_id or new_request_id()
    elif not valid_request_id(request_id):
        raise RequestError(
            "invalid_request",
            "request_id must be 1-100 characters of A-Z a-z 0-9 _ -",
            request_id=fallback_request_id or new_request_id(),
            service=service if isinstance(service, str) and valid_service_name(service) else None,
        )
    assert isinstance(request_id, str)
    if not isinstance(service, str) or not service:
        raise RequestError("invalid_request", "service is required and must be a string", request_id=request_id)
    if not valid_service_name(service):
        raise RequestError("unknown_service", "no such service", request_id=request_id)
    if not has_payload or payload is None:
        raise RequestError("invalid_request", "payload is required", request_id=request_id, service=service)
    if not isinstance(payload, dict):
        raise RequestError("invalid_request", "payload must be a JSON object", request_id=request_id, service=service)
    seconds = _timeout(timeout, request_id, service)
    problem = payload_problem(payload, from_json=from_json)
    if problem:
        raise RequestError("invalid_payload", problem, request_id=request_id, service=service)
    return OrchestrateRequest(request_id, service, payload, seconds, client_id)


def valid_service_name(name: str) -> bool:
    """Service names are short printable identifiers; anything else cannot be registered, so it is unknown."""
    return 0 < len(name) <= 64 and name.isprintable()


def _timeout(value: object, request_id: str, service: str) -> float:
    if value is None:
        return DEFAULT_TIMEOUT_S
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RequestError("invalid_request", "timeout must be a number of seconds", request_id=request_id,
                           service=service)
    try:
        seconds = float(value)
    except OverflowError:
        seconds = math.inf
    if not math.isfinite(seconds) or not 0 < seconds <= MAX_TIMEOUT_S:
        raise RequestError(
            "invalid_request", f"timeout must be > 0 and <= {MAX_TIMEOUT_S:g} seconds", request_id=request_id,
            service=service,
        )
    return seconds


_SCALARS = (str, int, bool, type(None))


def payload_problem(payload: dict[str, Any], *, from_json: bool = False) -> str | None:
    """Why a payload is structurally dangerous (too deep, NUL bytes or over-long keys), or None when it is fine.

    A payload decoded from JSON text holds only JSON types. One that came as a Python object (an ``Orchestrate``
    message) may hold anything, so with ``from_json=False`` every key and value is also checked to be JSON.
    """
    # Iterative walk: a recursive one could itself be driven into RecursionError by the payload.
    stack: list[tuple[Any, int]] = [(payload, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_PAYLOAD_DEPTH:
            return f"payload nests deeper than {MAX_PAYLOAD_DEPTH} levels"
        items = value.items() if isinstance(value, dict) else enumerate(value)
        for key, item in items:
            if isinstance(value, dict):
                if not isinstance(key, str):
                    return "payload keys must be strings"
                if "\x00" in key:
                    return "payload keys must not contain NUL bytes"
                if len(key) > MAX_KEY_LENGTH:
                    return f"payload keys must be at most {MAX_KEY_LENGTH} characters"
            if isinstance(item, dict | list):
                stack.append((item, depth + 1))
            elif isinstance(item, float):
                if not math.isfinite(item):  # also from JSON text: 1e999 parses as infinity
                    return "payload numbers must be finite"
            elif not from_json and not isinstance(item, _SCALARS):
                return f"payload values must be JSON (found {type(item).__name__})"
    return None
