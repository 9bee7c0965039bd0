"""Steady request traffic for fault tests: threads that keep calling the orchestrator and record every answer."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Sequence
from typing import Any

import attrs
import requests


@attrs.frozen
class Answer:
    """One request and the single answer it got."""

    service: str
    request_id: str
    status: int
    code: str | None
    echoed_id: str | None


class Traffic:
    """``threads`` clients per service, each sending one request after another (keep-alive) until ``stop()``."""

    _ids = itertools.count(1)

    def __init__(self, base_url: str, services: Sequence[str], threads: int = 2, timeout_s: float = 5.0):
        self._base_url = base_url
        self._timeout_s = timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.answers: list[Answer] = []
        self.errors: list[str] = []
        self._threads = [threading.Thread(target=self._run, args=(service,), daemon=True)
                         for service in services for _ in range(threads)]

    def __enter__(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop and wait for the clients (each finishes the request it has out)."""
        self._stop.set()
        for thread in self._threads:
            thread.join(self._timeout_s + 10)

    def count(self, service: str | None = None) -> int:
        """Answers so far (for one service)."""
        with self._lock:
            return sum(1 for a in self.answers if service in (None, a.service))

    def by_service(self, service: str) -> list[Answer]:
        """The answers for one service."""
        with self._lock:
            return [a for a in self.answers if a.service == service]

    def _run(self, service: str) -> None:
        session = requests.Session()
        session.trust_env = False
        try:
            while not self._stop.is_set():
                request_id = f"t{next(self._ids)}"
                body = {"service": service, "payload": {"text": request_id}, "request_id": request_id,
                        "timeout": self._timeout_s}
                try:
                    response = session.post(self._base_url + "/v1/orchestrate", json=body,
                                            timeout=self._timeout_s + 10)
                    data = response.json()
                except (requests.RequestException, ValueError) as exc:
                    with self._lock:
                        self.errors.append(f"{service} {request_id}: {type(exc).__name__}: {exc}")
                    continue
                code = data.get("error", {}).get("code") if response.status_code != 200 else None
                with self._lock:
                    self.answers.append(Answer(service, request_id, response.status_code, code,
                                               data.get("request_id")))
        finally:
            session.close()


def find_node(tree: dict[str, Any], *path: str) -> dict[str, Any] | None:
    """The node at ``path`` (names from the root's children down) in a ``GET /v1/actors`` tree."""
    node = tree
    for name in path:
        node = next((child for child in node.get("children", []) if child["name"] == name), None)  # type: ignore[assignment]
        if node is None:
            return None
    return node
