"""The contract's JSON envelopes, the HTTP status of each error code, and the response headers."""

from __future__ import annotations

import json

import pytest

from system.envelope import error_body, error_status, json_body, response_headers, success_body
from system.errors import ERROR_STATUS, RETRYABLE_CODES


def test_success_body_has_exactly_the_contract_keys_and_values():
    raw = success_body("req-123", "tokenguard", b'{"safe":true,"score":0.1}', 3.14159)
    assert json.loads(raw) == {
        "request_id": "req-123",
        "service": "tokenguard",
        "status": "success",
        "result": {"safe": True, "score": 0.1},
        "duration_ms": 3.142,
    }
    assert list(json.loads(raw)) == ["request_id", "service", "status", "result", "duration_ms"]


def test_success_body_splices_the_raw_result_byte_for_byte():
    result = b'{ "z": 1,  "a": [1.50, "\\u00e9"], "big": 12345678901234567890 }'
    raw = success_body("r", "s", result, 1.0)
    assert result in raw
    assert json.loads(raw)["result"] == json.loads(result)


@pytest.mark.parametrize("result", [b"[]", b"null", b'"text"', b"42", b"{}"])
def test_success_body_takes_any_json_result(result):
    assert json.loads(success_body("r", "s", result, 0.0))["result"] == json.loads(result)


def test_duration_is_rounded_to_microseconds():
    assert json.loads(success_body("r", "s", b"{}", 0.0004))["duration_ms"] == 0.0
    assert json.loads(success_body("r", "s", b"{}", 1234.56789))["duration_ms"] == 1234.568


def test_error_body_has_exactly_the_contract_keys_and_values():
    raw = error_body("req-123", "tokenguard", "circuit_open", "the breaker is open")
    assert json.loads(raw) == {
        "request_id": "req-123",
        "service": "tokenguard",
        "status": "error",
        "error": {"code": "circuit_open", "message": "the breaker is open"},
    }


def test_error_body_without_a_service_has_null_service():
    assert json.loads(error_body("r", None, "invalid_request", "m"))["service"] is None


def test_error_body_includes_detail_only_when_given():
    with_detail = json.loads(error_body("r", "s", "guard_rejected", "m", b'{"reason":"too long"}'))
    assert with_detail["error"] == {"code": "guard_rejected", "message": "m", "detail": {"reason": "too long"}}
    assert "detail" not in json.loads(error_body("r", "s", "guard_rejected", "m"))["error"]
    assert "detail" not in json.loads(error_body("r", "s", "guard_rejected", "m", None))["error"]
    assert "detail" not in json.loads(error_body("r", "s", "guard_rejected", "m", b""))["error"]


def test_error_detail_is_spliced_raw():
    detail = b'"plain text from the guard"'
    raw = error_body("r", "s", "guard_rejected", "m", detail)
    assert detail in raw
    assert json.loads(raw)["error"]["detail"] == "plain text from the guard"


@pytest.mark.parametrize(
    "text",
    ['quote " and backslash \\', "line\nbreak\ttab", "caf\u00e9 \u2603 \U0001f600", "</script>", "\x00\x1f",
     "\u2028\u2029"],
)
def test_quotes_control_characters_and_unicode_are_escaped(text):
    ok = json.loads(success_body(text, text, b"{}", 1.0))
    assert ok["request_id"] == text
    assert ok["service"] == text
    err = json.loads(error_body(text, text, "internal_error", text))
    assert err["request_id"] == text
    assert err["error"]["message"] == text


def test_envelopes_are_ascii_bytes():
    raw = error_body("r", "s", "invalid_request", "caf\u00e9 \U0001f600")
    assert isinstance(raw, bytes)
    raw.decode("ascii")


@pytest.mark.parametrize("code", sorted(ERROR_STATUS))
def test_error_status_follows_the_table(code):
    assert error_status(code) == ERROR_STATUS[code]


def test_error_status_values_match_the_contract():
    assert ERROR_STATUS == {
        "invalid_request": 400, "invalid_payload": 400, "unauthorized": 401, "forbidden": 403,
        "unknown_service": 404, "conflict": 409, "payload_too_large": 413, "rate_limited": 429,
        "guard_rejected": 400, "upstream_error": 502, "circuit_open": 503, "service_unavailable": 503,
        "overloaded": 503, "upstream_timeout": 504, "internal_error": 500,
    }


@pytest.mark.parametrize("status", [400, 401, 404, 409, 422, 429, 499])
def test_guard_rejected_keeps_the_guards_4xx(status):
    assert error_status("guard_rejected", status) == status


@pytest.mark.parametrize("status", [0, 200, 302, 399, 500, 503])
def test_guard_rejected_without_a_4xx_falls_back_to_400(status):
    assert error_status("guard_rejected", status) == 400


def test_other_codes_ignore_the_guard_status():
    assert error_status("upstream_error", 418) == 502


def test_an_unknown_code_is_500():
    assert error_status("no_such_code") == 500


def test_response_headers_carry_content_type_and_request_id():
    assert response_headers("req-1") == [("Content-Type", "application/json"), ("X-Request-ID", "req-1")]
    assert response_headers("req-1", "invalid_request", 30) == [
        ("Content-Type", "application/json"), ("X-Request-ID", "req-1")]


@pytest.mark.parametrize("code", ["rate_limited", "circuit_open", "overloaded", "service_unavailable"])
def test_retry_after_is_added_for_the_come_back_later_codes(code):
    assert code in RETRYABLE_CODES
    assert ("Retry-After", "17") in response_headers("r", code, 17)


@pytest.mark.parametrize("retry_after", [None, 0, -5])
def test_retry_after_is_never_below_one(retry_after):
    headers = dict(response_headers("r", "rate_limited", retry_after))
    assert headers["Retry-After"] == "1"


@pytest.mark.parametrize("code", sorted(set(ERROR_STATUS) - RETRYABLE_CODES))
def test_no_retry_after_for_other_codes(code):
    assert "Retry-After" not in dict(response_headers("r", code, 10))


def test_json_body_is_compact():
    assert json_body({"a": [1, 2], "b": "c"}) == b'{"a":[1,2],"b":"c"}'
