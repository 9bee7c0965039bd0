"""README.rst and CHANGELOG.rst render cleanly, and the README documents every setting the code reads."""

from __future__ import annotations

import io
import re
from pathlib import Path

import docutils.core
import pytest

from system.routing import SERVICE_TYPES

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["README.rst", "CHANGELOG.rst"])
def test_the_document_renders_without_warnings(name: str) -> None:
    warnings = io.StringIO()
    docutils.core.publish_doctree((REPO / name).read_text(),
                                  settings_overrides={"warning_stream": warnings, "report_level": 2})
    assert warnings.getvalue() == ""


def test_every_environment_variable_the_code_reads_is_in_the_readme() -> None:
    code = (REPO / "system" / "config.py").read_text()
    names = set(re.findall(r'env\.get\("([A-Z_]+)"', code)) | {t.env_var for t in SERVICE_TYPES.values()}
    assert len(names) > 15
    readme = (REPO / "README.rst").read_text()
    missing = sorted(n for n in names if f"``{n}``" not in readme)
    assert missing == []
