"""The service registry: guards from settings, registration checks and their error codes, unregistering."""

from __future__ import annotations

import pytest

from actors.messages import ServiceSpec
from system.config import Settings
from system.errors import RequestError
from system.registry import MAX_METADATA_BYTES, Registry, check_registration


def refusal(registry: Registry, *args: object) -> RequestError:
    with pytest.raises(RequestError) as info:
        registry.register(*args, request_id="req-r")
    return info.value


def test_from_settings_names_guards_after_their_type_with_source_env():
    settings = Settings.from_env({"TOKENGUARD_URL": "http://127.0.0.1:8001/", "BIASGUARD_URL": "http://h:8004"})
    registry = Registry.from_settings(settings)
    assert registry.specs() == (
        ServiceSpec("biasguard", "biasguard", "http://h:8004", {}, "env"),
        ServiceSpec("tokenguard", "tokenguard", "http://127.0.0.1:8001", {}, "env"),
    )


def test_from_settings_marks_embedded_guards():
    settings = Settings().with_guard_urls({"trustguard": "http://127.0.0.1:40001"}, embedded=True)
    assert Registry.from_settings(settings).specs() == (
        ServiceSpec("trustguard", "trustguard", "http://127.0.0.1:40001", {}, "embedded"),
    )


def test_from_settings_with_no_guards_is_empty():
    assert Registry.from_settings(Settings()).specs() == ()


def test_register_adds_a_guard_from_the_api():
    registry = Registry()
    spec = registry.register("my-guard", "generic", "http://10.0.0.5:9000/", {"path": "/check"})
    assert spec == ServiceSpec("my-guard", "generic", "http://10.0.0.5:9000", {"path": "/check"}, "api")
    assert registry.get("my-guard") == spec
    assert registry.get("other") is None


def test_register_without_metadata_gives_an_empty_dict():
    spec = Registry().register("tg2", "tokenguard", "https://guard.example", None)
    assert spec.metadata == {}


def test_register_copies_metadata():
    metadata = {"team": "x"}
    spec = Registry().register("g", "generic", "http://h", metadata)
    metadata["team"] = "y"
    assert spec.metadata == {"team": "x"}


def test_specs_are_sorted_by_name():
    registry = Registry()
    for name in ["zeta", "alpha", "mid", "0first"]:
        registry.register(name, "generic", "http://h", None)
    assert [s.name for s in registry.specs()] == ["0first", "alpha", "mid", "zeta"]


def test_a_taken_name_is_a_conflict():
    registry = Registry.from_settings(Settings.from_env({"TOKENGUARD_URL": "http://h:1"}))
    err = refusal(registry, "tokenguard", "tokenguard", "http://other:2", None)
    assert err.code == "conflict"
    assert err.http_status == 409
    assert err.service == "tokenguard"
    assert err.request_id == "req-r"
    assert registry.get("tokenguard").url == "http://h:1"


@pytest.mark.parametrize(
    ("name", "service_type", "url", "metadata"),
    [
        (None, "generic", "http://h", None),
        (5, "generic", "http://h", None),
        ("", "generic", "http://h", None),
        ("Upper", "generic", "http://h", None),
        ("-dash", "generic", "http://h", None),
        ("has space", "generic", "http://h", None),
        ("a" * 65, "generic", "http://h", None),
        ("ok", None, "http://h", None),
        ("ok", "webguard", "http://h", None),
        ("ok", "Generic", "http://h", None),
        ("ok", "generic", None, None),
        ("ok", "generic", 42, None),
        ("ok", "generic", "ftp://h", None),
        ("ok", "generic", "http://user:pw@h", None),
        ("ok", "generic", "http://", None),
        ("ok", "generic", "h:80", None),
        ("ok", "generic", "http://h:99999", None),
        ("ok", "generic", "http://h/?q=1", None),
        ("ok", "generic", "http://[::1", None),
        ("ok", "generic", "http://h", []),
        ("ok", "generic", "http://h", "path=/x"),
        ("ok", "generic", "http://h", {"x": {1, 2}}),
        ("ok", "generic", "http://h", {"big": "x" * MAX_METADATA_BYTES}),
        ("ok", "generic", "http://h", {"path": "no-slash"}),
        ("ok", "generic", "http://h", {"path": 5}),
        ("ok", "generic", "http://h", {"path": "/" + "p" * 1024}),
    ],
)
def test_each_bad_field_is_refused_as_invalid_request(name, service_type, url, metadata):
    registry = Registry()
    err = refusal(registry, name, service_type, url, metadata)
    assert err.code == "invalid_request"
    assert err.http_status == 400
    assert err.request_id == "req-r"
    assert registry.specs() == ()


def test_circular_metadata_is_refused_as_invalid_request():
    metadata: dict[str, object] = {}
    metadata["self"] = metadata
    assert refusal(Registry(), "ok", "generic", "http://h", metadata).code == "invalid_request"


@pytest.mark.parametrize("service_type", ["tokenguard", "trustguard", "contextguard", "biasguard", "healthguard",
                                          "securityguard", "generic"])
def test_every_known_type_can_be_registered(service_type):
    assert Registry().register("g-1", service_type, "http://h", None).service_type == service_type


def test_metadata_path_of_1024_characters_is_accepted():
    path = "/" + "p" * 1023
    assert check_registration("g", "generic", "http://h", {"path": path}).metadata == {"path": path}


def test_a_name_with_a_trailing_newline_is_refused():
    err = refusal(Registry(), "abc\n", "generic", "http://h", None)
    assert err.code == "invalid_request"


def test_unregister_removes_and_returns_the_spec():
    registry = Registry()
    spec = registry.register("g", "generic", "http://h", None)
    assert registry.unregister("g") == spec
    assert registry.specs() == ()
    registry.register("g", "generic", "http://h2", None)
    assert registry.get("g").url == "http://h2"


def test_unregister_of_an_unknown_name_is_unknown_service():
    with pytest.raises(RequestError) as info:
        Registry().unregister("ghost", request_id="req-d")
    assert info.value.code == "unknown_service"
    assert info.value.http_status == 404
    assert info.value.request_id == "req-d"


def test_a_registry_built_from_specs_keeps_them():
    spec = ServiceSpec("x", "generic", "http://h", {}, "api")
    assert Registry([spec]).get("x") is spec
