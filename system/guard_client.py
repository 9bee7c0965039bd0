"""The one boundary to the guards over HTTP: turns every way a call or a health check can end into one of the
contract's outcomes. Calls go over ``system.guard_http``'s keep-alive connections (the hot path); health checks
over a ``requests.Session``. Nothing else in the project calls guards.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
import time
from collections.abc import Callable

import attrs
import requests

from system.guard_http import GuardConnections, Late, TooLarge

MAX_RESPONSE_BYTES = 10 * 1024 * 1024
DEFAULT_CONNECT_TIMEOUT_S = 5.0

HEALTHY = "HEALTHY"
DEGRADED = "DEGRADED"
UNHEALTHY = "UNHEALTHY"
UNKNOWN = "UNKNOWN"


@attrs.frozen
class CallOutcome:
    """How a guard call ended: ``outcome`` is "success" or a contract error code."""

    outcome: str
    status: int = 0
    body: bytes = b""
    message: str = ""
    # The connection was refused, reset or closed without an answer (retryable, unlike a timeout).
    connection_failed: bool = False


@attrs.frozen
class HealthOutcome:
    """One health check: HEALTHY, DEGRADED or UNHEALTHY, with the status code (0 if none) and why."""

    state: str
    status: int
    message: str


class GuardClient:
    """Makes guard calls and health checks; one per worker process (a Session is not shared across processes)."""

    def __init__(
        self,
        session: requests.Session | None = None,
        *,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        max_response_bytes: int = MAX_RESPONSE_BYTES,
        wallclock: Callable[[], float] = time.time,
    ):
        self._session = session or _new_session()
        self._connections = GuardConnections(connect_timeout_s=connect_timeout_s,
                                             max_response_bytes=max_response_bytes, wallclock=wallclock)
        self._connect_timeout_s = connect_timeout_s
        self._max_response_bytes = max_response_bytes
        self._now = wallclock

    def call(self, endpoint: str, body: bytes, request_id: str, expires_at: float) -> CallOutcome:
        """POST ``body`` (JSON) to ``endpoint``; give up at ``expires_at`` (wall clock)."""
        if expires_at - self._now() <= 0:
            return CallOutcome("upstream_timeout", message="the request's timeout passed before the guard was called")
        try:
            status, content = self._connections.post(endpoint, body, request_id, expires_at)
        except (TimeoutError, Late):
            return CallOutcome("upstream_timeout", message="the guard did not answer within the request's timeout")
        except TooLarge:
            return CallOutcome("upstream_error", message=f"the guard's answer exceeds {self._max_response_bytes} bytes")
        except OSError as exc:
            if self._now() >= expires_at:
                return CallOutcome("upstream_timeout", message="the guard did not answer within the request's timeout")
            return CallOutcome("upstream_error", message=_socket_problem(exc), connection_failed=True)
        except (http.client.HTTPException, ValueError) as exc:
            return CallOutcome("upstream_error", message=f"the call failed: {type(exc).__name__}")
        return _classify(status, content)

    def check_health(self, url: str, timeout_s: float) -> HealthOutcome:
        """GET ``url`` (a guard's /health): 2xx is HEALTHY, or DEGRADED when it says so; anything else UNHEALTHY."""
        try:
            response = self._session.get(url, timeout=(min(self._connect_timeout_s, timeout_s), timeout_s),
                                         allow_redirects=False)
        except requests.Timeout:
            return HealthOutcome(UNHEALTHY, 0, f"no answer within {timeout_s:g} s")
        except requests.ConnectionError as exc:
            return HealthOutcome(UNHEALTHY, 0, _connection_problem(exc))
        except requests.RequestException as exc:
            return HealthOutcome(UNHEALTHY, 0, f"the check failed: {type(exc).__name__}")
        if not 200 <= response.status_code < 300:
            return HealthOutcome(UNHEALTHY, response.status_code, f"answered {response.status_code}")
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and str(data.get("status", "")).lower() == "degraded":
            return HealthOutcome(DEGRADED, response.status_code, "reports degraded")
        return HealthOutcome(HEALTHY, response.status_code, "ok")

    def close(self) -> None:
        """Close the open connections."""
        self._connections.close()
        self._session.close()


def _new_session() -> requests.Session:
    session = requests.Session()
    # Proxies and .netrc from the environment have no business on a loopback hop to a guard, and looking them
    # up costs on every call (shared/DESIGN.md).
    session.trust_env = False
    return session


def _no_constants(name: str) -> None:
    # NaN and Infinity are not JSON: an answer holding them is a broken answer, and passing it on would make ours
    # invalid too.
    raise ValueError(f"{name} is not JSON")


def _classify(status: int, content: bytes) -> CallOutcome:
    if 200 <= status < 300:
        try:
            json.loads(content, parse_constant=_no_constants)
        except ValueError:
            return CallOutcome("upstream_error", status, message=f"the guard answered {status} with invalid JSON")
        return CallOutcome("success", status, content)
    if 400 <= status < 500:
        return CallOutcome("guard_rejected", status, _as_json_detail(content),
                           f"the guard refused the input ({status})")
    return CallOutcome("upstream_error", status, message=f"the guard answered {status}")


def _as_json_detail(content: bytes) -> bytes:
    """The guard's 4xx body as JSON: as sent when it is JSON, else as a JSON string (cut to 1 KiB)."""
    try:
        json.loads(content, parse_constant=_no_constants)
        return content
    except ValueError:
        return json.dumps(content[:1024].decode("utf-8", "replace")).encode()


def _socket_problem(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "the guard refused the connection"
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe, closed without an answer
        return "the guard reset or closed the connection"
    if isinstance(exc, socket.gaierror):
        return "the guard's host name does not resolve"
    if isinstance(exc, ssl.SSLError):
        return f"TLS with the guard failed: {exc.reason or exc}"
    return "could not reach the guard"


def _connection_problem(exc: requests.ConnectionError) -> str:
    text = str(exc).lower()
    if "refused" in text:
        return "the guard refused the connection"
    if "reset" in text or "aborted" in text or "remotedisconnected" in text or "closed connection" in text:
        return "the guard reset or closed the connection"
    if "name or service" in text or "resolution" in text:
        return "the guard's host name does not resolve"
    return "could not reach the guard"
