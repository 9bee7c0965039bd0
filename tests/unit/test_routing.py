"""Service types: each guard's call path per CONTRACT.md, the payload transforms, and the service-name rule."""

from __future__ import annotations

import pytest

from system.routing import (
    GENERIC,
    SERVICE_NAME,
    SERVICE_TYPES,
    TRANSFORMS,
    endpoint_for,
    health_url,
    known_type,
    transform_for,
)

CONTRACT_TABLE = [
    ("tokenguard", "TOKENGUARD_URL", "/scan", 8001),
    ("trustguard", "TRUSTGUARD_URL", "/v1/validate", 8002),
    ("contextguard", "CONTEXTGUARD_URL", "/analyze", 8003),
    ("biasguard", "BIASGUARD_URL", "/analyze", 8004),
    ("healthguard", "HEALTHGUARD_URL", "/analyze", 8005),
    ("securityguard", "SECURITYGUARD_URL", "/validate", 8103),
]


def test_the_six_contract_types_and_nothing_else_are_built_in():
    assert sorted(SERVICE_TYPES) == sorted(name for name, *_ in CONTRACT_TABLE)


@pytest.mark.parametrize(("name", "env_var", "path", "port"), CONTRACT_TABLE)
def test_each_type_has_the_contract_env_var_path_and_seed_port(name, env_var, path, port):
    info = SERVICE_TYPES[name]
    assert (info.name, info.env_var, info.path, info.seed_port) == (name, env_var, path, port)


@pytest.mark.parametrize(("name", "path"), [(name, path) for name, _, path, _ in CONTRACT_TABLE])
def test_each_type_is_called_at_its_contract_path(name, path):
    assert endpoint_for(name, "http://127.0.0.1:9000", {}) == "http://127.0.0.1:9000" + path


@pytest.mark.parametrize("url", ["http://g:1", "http://g:1/", "http://g:1//"])
def test_trailing_slashes_on_the_url_do_not_double_up(url):
    assert endpoint_for("tokenguard", url, {}) == "http://g:1/scan"


def test_a_base_path_in_the_url_is_kept():
    assert endpoint_for("trustguard", "https://g.example/guards/trust/", {}) == "https://g.example/guards/trust/v1/validate"


@pytest.mark.parametrize(("path", "expected"), [("/custom", "http://g/custom"), ("custom", "http://g/custom"),
                                               ("/a/b/", "http://g/a/b/"), ("/", "http://g/")])
def test_metadata_path_overrides_the_type_path(path, expected):
    assert endpoint_for("tokenguard", "http://g/", {"path": path}) == expected


def test_a_non_string_metadata_path_is_ignored():
    assert endpoint_for("tokenguard", "http://g", {"path": 5}) == "http://g/scan"
    assert endpoint_for("tokenguard", "http://g", {"path": None}) == "http://g/scan"


def test_generic_type_defaults_to_root_and_takes_metadata_path():
    assert endpoint_for(GENERIC, "http://g:7/", {}) == "http://g:7/"
    assert endpoint_for(GENERIC, "http://g:7", {"path": "/check"}) == "http://g:7/check"


def test_health_url_is_url_slash_health():
    assert health_url("http://g:1") == "http://g:1/health"
    assert health_url("http://g:1/base/") == "http://g:1/base/health"


@pytest.mark.parametrize(
    ("name", "transform"),
    [("tokenguard", "as_is"), ("trustguard", "with_request_id"), ("contextguard", "with_text"),
     ("biasguard", "with_text"), ("healthguard", "with_text"), ("securityguard", "as_is"), (GENERIC, "as_is"),
     ("never-heard-of", "as_is")],
)
def test_transform_for_each_type(name, transform):
    assert transform_for(name) == transform
    assert transform in TRANSFORMS


def test_known_type_is_the_six_plus_generic():
    for name in SERVICE_TYPES:
        assert known_type(name)
    assert known_type("generic")
    assert not known_type("Generic")
    assert not known_type("")
    assert not known_type("webguard")


# -- transforms ------------------------------------------------------------------------------------------------


def test_as_is_returns_an_equal_copy_and_does_not_mutate_the_input():
    payload = {"text": "hi", "n": [1, 2]}
    out = TRANSFORMS["as_is"](payload, "req-1")
    assert out == {"text": "hi", "n": [1, 2]}
    assert out is not payload
    out["extra"] = 1
    assert payload == {"text": "hi", "n": [1, 2]}


def test_as_is_does_not_add_the_request_id():
    assert "request_id" not in TRANSFORMS["as_is"]({"text": "x"}, "req-1")


def test_with_request_id_adds_the_request_id():
    payload = {"text": "x"}
    out = TRANSFORMS["with_request_id"](payload, "req-1")
    assert out == {"text": "x", "request_id": "req-1"}
    assert payload == {"text": "x"}


def test_with_request_id_does_not_overwrite_a_callers_request_id():
    out = TRANSFORMS["with_request_id"]({"request_id": "caller-own"}, "req-1")
    assert out == {"request_id": "caller-own"}


def test_with_text_copies_content_to_text_when_text_is_absent():
    payload = {"content": "older field"}
    out = TRANSFORMS["with_text"](payload, "req-1")
    assert out == {"content": "older field", "text": "older field"}
    assert payload == {"content": "older field"}


def test_with_text_leaves_an_existing_text_alone():
    out = TRANSFORMS["with_text"]({"content": "c", "text": "t"}, "req-1")
    assert out == {"content": "c", "text": "t"}


def test_with_text_ignores_non_string_content_and_absent_content():
    assert TRANSFORMS["with_text"]({"content": ["x"]}, "r") == {"content": ["x"]}
    assert TRANSFORMS["with_text"]({"other": 1}, "r") == {"other": 1}


def test_with_text_keeps_an_explicit_null_text():
    assert TRANSFORMS["with_text"]({"text": None, "content": "c"}, "r") == {"text": None, "content": "c"}


# -- service names ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a", "0", "tokenguard", "my-guard_2", "a" * 64, "9lives"])
def test_service_name_accepts_lowercase_identifiers_up_to_64(name):
    assert SERVICE_NAME.match(name)


@pytest.mark.parametrize(
    "name",
    ["", "a" * 65, "-lead", "_lead", "Upper", "has space", "dot.ted", "slash/x", "caf\u00e9", "\nabc"],
)
def test_service_name_refuses_everything_else(name):
    assert not SERVICE_NAME.match(name)


def test_service_name_refuses_a_trailing_newline():
    assert not SERVICE_NAME.match("abc\n")
