"""The built-in guard service types: where each is called and how the caller's payload is transformed.

Pure functions and tables; see README.rst ("Service types") for the per-type documentation.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import attrs

Transform = Callable[[Mapping[str, Any], str], dict[str, Any]]


def _as_is(payload: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """The payload unchanged; the request id travels only in the ``X-Request-ID`` header."""
    return dict(payload)


def _with_request_id(payload: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """TrustGuard's v1 API also takes the request id in the body, for its audit log."""
    body = dict(payload)
    body.setdefault("request_id", request_id)
    return body


def _with_text(payload: Mapping[str, Any], request_id: str) -> dict[str, Any]:
    """Analyzers read ``text``; callers that send ``content`` (the older field name) get it copied over."""
    body = dict(payload)
    if "text" not in body and isinstance(body.get("content"), str):
        body["text"] = body["content"]
    return body


TRANSFORMS: dict[str, Transform] = {
    "as_is": _as_is,
    "with_request_id": _with_request_id,
    "with_text": _with_text,
}


@attrs.frozen
class ServiceType:
    """One guard type: its URL variable, seed port, call path and payload transform."""

    name: str
    env_var: str
    seed_port: int
    path: str
    transform: str


SERVICE_TYPES: dict[str, ServiceType] = {
    t.name: t
    for t in (
        ServiceType("tokenguard", "TOKENGUARD_URL", 8001, "/scan", "as_is"),
        ServiceType("trustguard", "TRUSTGUARD_URL", 8002, "/v1/validate", "with_request_id"),
        ServiceType("contextguard", "CONTEXTGUARD_URL", 8003, "/analyze", "with_text"),
        ServiceType("biasguard", "BIASGUARD_URL", 8004, "/analyze", "with_text"),
        ServiceType("healthguard", "HEALTHGUARD_URL", 8005, "/analyze", "with_text"),
        ServiceType("securityguard", "SECURITYGUARD_URL", 8103, "/validate", "as_is"),
    )
}

# A registered service of type "generic" names its own path in metadata["path"] (default "/").
GENERIC = "generic"

SERVICE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}\Z")


def endpoint_for(service_type: str, url: str, metadata: Mapping[str, Any]) -> str:
    """The full URL a guard of this type is called at; ``metadata["path"]`` overrides the type's path."""
    path = metadata.get("path")
    if not isinstance(path, str):
        path = SERVICE_TYPES[service_type].path if service_type in SERVICE_TYPES else "/"
    return url.rstrip("/") + "/" + path.lstrip("/")


def transform_for(service_type: str) -> str:
    """The name of the payload transform for a service type."""
    info = SERVICE_TYPES.get(service_type)
    return info.transform if info else "as_is"


def known_type(service_type: str) -> bool:
    """True for the six built-in types and ``generic``."""
    return service_type in SERVICE_TYPES or service_type == GENERIC


def health_url(url: str) -> str:
    """Where a guard answers health checks."""
    return url.rstrip("/") + "/health"
