"""Static files the HTTP shim serves, read once from the package: the OpenAPI document (``GET /openapi.json``)
and the ops page (``GET /``)."""

from __future__ import annotations

import functools
import json
from importlib import resources


@functools.cache
def openapi_document() -> bytes:
    """The document, compact, as served."""
    text = resources.files("system").joinpath("openapi.json").read_text()
    return json.dumps(json.loads(text), separators=(",", ":")).encode()


@functools.cache
def ops_page() -> bytes:
    """The ops page: one self-contained HTML file (its script reads the JSON endpoints)."""
    return resources.files("system").joinpath("ops_page.html").read_bytes()
