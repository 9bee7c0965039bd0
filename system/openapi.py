"""The OpenAPI document of the HTTP shim (``GET /openapi.json``), read once from the package."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def openapi_document() -> bytes:
    """The document, compact, as served."""
    text = resources.files("system").joinpath("openapi.json").read_text()
    return json.dumps(json.loads(text), separators=(",", ":")).encode()
