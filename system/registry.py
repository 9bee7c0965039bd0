"""The service registry: which guards exist, checked on the way in. Owned by the Discovery actor."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping

from actors.messages import ServiceSpec
from system.config import Settings, check_guard_url
from system.errors import RequestError
from system.policy import policy_problem
from system.routing import GENERIC, SERVICE_NAME, SERVICE_TYPES, known_type

MAX_METADATA_BYTES = 16 * 1024


class Registry:
    """Registered guards by name; ``register`` and ``unregister`` raise ``RequestError`` with the contract's code."""

    def __init__(self, specs: Iterable[ServiceSpec] = ()):
        self._specs: dict[str, ServiceSpec] = {spec.name: spec for spec in specs}

    @classmethod
    def from_settings(cls, settings: Settings) -> Registry:
        """The guards configured by environment (or the embedded reference guards), named after their type."""
        source = "embedded" if settings.embedded else "env"
        return cls(ServiceSpec(t, t, url, {}, source) for t, url in settings.guard_urls.items())

    def follow_settings(self, settings: Settings) -> bool:
        """Update the guards that came from the environment to its new URLs (added, changed, removed); the ones
        registered over the API stay. True when anything changed."""
        wanted = {spec.name: spec for spec in Registry.from_settings(settings).specs()}
        changed = False
        for name, spec in list(self._specs.items()):
            if spec.source in ("env", "embedded") and name not in wanted:
                del self._specs[name]
                changed = True
        for name, spec in wanted.items():
            current = self._specs.get(name)
            if current is None or (current.source in ("env", "embedded") and current.url != spec.url):
                self._specs[name] = spec
                changed = True
        return changed

    def specs(self) -> tuple[ServiceSpec, ...]:
        """Every registered guard, by name."""
        return tuple(self._specs[name] for name in sorted(self._specs))

    def get(self, name: str) -> ServiceSpec | None:
        """One guard, or None."""
        return self._specs.get(name)

    def register(self, name: object, service_type: object, url: object, metadata: object,
                 request_id: str | None = None) -> ServiceSpec:
        """Add a guard; refused when the name is taken or a field is wrong."""
        spec = check_registration(name, service_type, url, metadata, request_id)
        if spec.name in self._specs:
            raise RequestError("conflict", f"a service named {spec.name!r} is already registered; delete it first",
                               request_id=request_id, service=spec.name)
        self._specs[spec.name] = spec
        return spec

    def unregister(self, name: str, request_id: str | None = None) -> ServiceSpec:
        """Remove a guard; ``unknown_service`` when there is none by that name."""
        spec = self._specs.pop(name, None)
        if spec is None:
            raise RequestError("unknown_service", f"no service named {name!r} is registered",
                               request_id=request_id, service=None)
        return spec


def check_registration(name: object, service_type: object, url: object, metadata: object,
                       request_id: str | None = None) -> ServiceSpec:
    """Validate the fields of ``POST /v1/services``."""

    def bad(message: str) -> RequestError:
        return RequestError("invalid_request", message, request_id=request_id)

    if not isinstance(name, str) or not SERVICE_NAME.match(name):
        raise bad("name must be 1-64 characters of a-z 0-9 _ -, starting with a letter or digit")
    if not isinstance(service_type, str) or not known_type(service_type):
        raise bad("service_type must be one of " + ", ".join([*SERVICE_TYPES, GENERIC]))
    if not isinstance(url, str):
        raise bad("url must be a string")
    try:
        check_guard_url(url)
    except ValueError as exc:
        raise bad(f"url {exc}") from None
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, Mapping):
        raise bad("metadata must be a JSON object")
    try:
        size = len(json.dumps(metadata))
    except (TypeError, ValueError):
        raise bad("metadata must be a JSON object") from None
    if size > MAX_METADATA_BYTES:
        raise bad(f"metadata must be at most {MAX_METADATA_BYTES} bytes of JSON")
    problem = policy_problem(metadata)
    if problem:
        raise bad(problem)
    path = metadata.get("path")
    if path is not None and (not isinstance(path, str) or not path.startswith("/") or len(path) > 1024):
        raise bad("metadata.path must be a string starting with /")
    return ServiceSpec(name, service_type, url.rstrip("/"), dict(metadata), "api")
