"""Request signing: Signer, SignatureChecker (every refusal reason, the window, replays) and ReplayCache."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from system import signing
from system.signing import SKEW_S, ReplayCache, SignatureChecker, Signer

KEY = "s3cret"
NOW = 1_700_000_000
BODY = b'{"service": "tokenguard", "payload": {"text": "hi"}}'


class FakeClock:
    def __init__(self, now: float = NOW):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make() -> tuple[SignatureChecker, FakeClock]:
    clock = FakeClock()
    return SignatureChecker(KEY, clock=clock), clock


def signed(body: bytes = BODY, timestamp: int = NOW, key: str = KEY) -> tuple[str, str]:
    headers = Signer(key).headers(body, timestamp)
    return headers["X-Aeyon-Timestamp"], headers["X-Aeyon-Signature"]


# -- Signer -------------------------------------------------------------------------------------------------------


def test_signer_headers_follow_the_contract():
    headers = Signer(KEY).headers(BODY, NOW)
    expected = hmac.new(KEY.encode(), f"{NOW}.".encode() + BODY, hashlib.sha256).hexdigest()
    assert headers == {"X-Aeyon-Timestamp": str(NOW), "X-Aeyon-Signature": "sha256=" + expected}


def test_signer_stamps_now_by_default(monkeypatch):
    monkeypatch.setattr(signing.time, "time", lambda: NOW + 0.9)
    assert Signer(KEY).headers(BODY)["X-Aeyon-Timestamp"] == str(NOW)


def test_str_and_bytes_keys_sign_alike():
    assert Signer(KEY).headers(BODY, NOW) == Signer(KEY.encode()).headers(BODY, NOW)


def test_empty_key_is_refused():
    with pytest.raises(ValueError):
        Signer("")
    with pytest.raises(ValueError):
        SignatureChecker(b"")


# -- SignatureChecker ---------------------------------------------------------------------------------------------


def test_round_trip():
    checker, _ = make()
    assert checker.check(*signed(), BODY) is None


def test_empty_body_round_trip():
    checker, _ = make()
    assert checker.check(*signed(b""), b"") is None


@pytest.mark.parametrize(
    ("timestamp", "signature", "reason"),
    [
        (None, "sha256=" + "0" * 64, "missing X-Aeyon-Timestamp"),
        (None, None, "missing X-Aeyon-Timestamp"),
        (str(NOW), None, "missing X-Aeyon-Signature"),
        ("", "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),
        ("abc", "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),
        (f"{NOW}.5", "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),
        (f"+{NOW}", "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),
        (f"-{NOW}", "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),
        ("1e9", "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),
        ("\u0661\u0667" + "\u0660" * 8, "sha256=" + "0" * 64, "X-Aeyon-Timestamp is not unix seconds"),  # Arabic-Indic
        ("9" * 5000, "sha256=" + "0" * 64, "timestamp outside the 300 s window"),
        (str(NOW - 1000), "sha256=" + "0" * 64, "timestamp outside the 300 s window"),
        (str(NOW), "0" * 64, "X-Aeyon-Signature is not sha256=<hex>"),
        (str(NOW), "sha256=", "X-Aeyon-Signature is not sha256=<hex>"),
        (str(NOW), "sha256=" + "0" * 63, "X-Aeyon-Signature is not sha256=<hex>"),
        (str(NOW), "sha256=" + "0" * 65, "X-Aeyon-Signature is not sha256=<hex>"),
        (str(NOW), "sha256=" + "g" * 64, "X-Aeyon-Signature is not sha256=<hex>"),
        (str(NOW), "sha1=" + "0" * 40, "X-Aeyon-Signature is not sha256=<hex>"),
        (str(NOW), "sha256=" + "0" * 64, "signature mismatch"),
    ],
)
def test_refusal_reasons(timestamp, signature, reason):
    checker, _ = make()
    assert checker.check(timestamp, signature, BODY) == reason


def test_reasons_never_echo_the_expected_signature():
    checker, _ = make()
    timestamp, genuine = signed()
    reason = checker.check(timestamp, "sha256=" + "0" * 64, BODY)
    assert reason is not None
    assert genuine.removeprefix("sha256=") not in reason


def test_wrong_key_is_a_mismatch():
    checker, _ = make()
    assert checker.check(*signed(key="other"), BODY) == "signature mismatch"


def test_tampered_body_is_a_mismatch():
    checker, _ = make()
    timestamp, signature = signed()
    assert checker.check(timestamp, signature, BODY + b" ") == "signature mismatch"
    assert checker.check(timestamp, signature, BODY.replace(b"hi", b"ho")) == "signature mismatch"


def test_changed_timestamp_is_a_mismatch():
    checker, _ = make()
    _, signature = signed()
    assert checker.check(str(NOW + 1), signature, BODY) == "signature mismatch"


def test_uppercase_hex_and_surrounding_spaces_are_accepted():
    checker, _ = make()
    timestamp, signature = signed()
    assert checker.check(f" {timestamp} ", "sha256=" + signature.removeprefix("sha256=").upper() + " ", BODY) is None


def test_comparison_is_constant_time(monkeypatch):
    calls = []
    real = hmac.compare_digest

    def spy(a, b):
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    checker, _ = make()
    assert checker.check(*signed(), BODY) is None
    assert checker.check(str(NOW), "sha256=" + "0" * 64, BODY) == "signature mismatch"
    assert len(calls) == 2


@pytest.mark.parametrize("offset", [-SKEW_S, SKEW_S])
def test_window_edges_are_accepted(offset):
    checker, _ = make()
    assert checker.check(*signed(timestamp=NOW + offset), BODY) is None


@pytest.mark.parametrize("offset", [-SKEW_S - 1, SKEW_S + 1])
def test_just_outside_the_window_is_refused(offset):
    checker, _ = make()
    assert checker.check(*signed(timestamp=NOW + offset), BODY) == "timestamp outside the 300 s window"


def test_fractional_clock_at_the_edge():
    checker, clock = make()
    headers = signed(timestamp=NOW - SKEW_S)
    clock.advance(0.5)
    assert checker.check(*headers, BODY) == "timestamp outside the 300 s window"


def test_replay_is_refused():
    checker, _ = make()
    headers = signed()
    assert checker.check(*headers, BODY) is None
    assert checker.check(*headers, BODY) == "signature already used (replay)"


def test_replay_with_uppercase_hex_is_still_a_replay():
    checker, _ = make()
    timestamp, signature = signed()
    assert checker.check(timestamp, signature, BODY) is None
    assert checker.check(timestamp, signature.upper().replace("SHA256=", "sha256="), BODY) == (
        "signature already used (replay)"
    )


def test_same_body_at_another_second_is_not_a_replay():
    checker, clock = make()
    assert checker.check(*signed(), BODY) is None
    clock.advance(1)
    assert checker.check(*signed(timestamp=NOW + 1), BODY) is None


def test_forged_pairs_do_not_enter_the_replay_cache():
    checker, _ = make()
    timestamp, signature = signed()
    # An attacker who saw (or guessed) the pair sends it with another body first: refused as a mismatch...
    assert checker.check(timestamp, signature, b"forged") == "signature mismatch"
    assert len(checker.replay) == 0
    # ...and the genuine request still passes.
    assert checker.check(timestamp, signature, BODY) is None
    assert len(checker.replay) == 1


def test_a_stale_replay_is_refused_by_the_window():
    checker, clock = make()
    headers = signed()
    assert checker.check(*headers, BODY) is None
    clock.advance(SKEW_S + 1)
    assert checker.check(*headers, BODY) == "timestamp outside the 300 s window"


def test_checker_uses_a_given_replay_cache():
    clock = FakeClock()
    cache = ReplayCache(clock=clock)
    a, b = SignatureChecker(KEY, clock, cache), SignatureChecker(KEY, clock, cache)
    headers = signed()
    assert a.check(*headers, BODY) is None
    assert b.check(*headers, BODY) == "signature already used (replay)"


# -- ReplayCache --------------------------------------------------------------------------------------------------


def test_cache_records_and_recognises():
    cache = ReplayCache(clock=FakeClock())
    assert not cache.seen_before(NOW, "aa")
    assert cache.seen_before(NOW, "aa")
    assert not cache.seen_before(NOW, "bb")
    assert not cache.seen_before(NOW + 1, "aa")
    assert len(cache) == 3


def test_cache_entries_expire_window_after_their_timestamp():
    clock = FakeClock()
    cache = ReplayCache(window_s=600, clock=clock)
    cache.seen_before(NOW - 100, "old")
    cache.seen_before(NOW + 100, "new")
    clock.advance(499.9)
    assert cache.seen_before(NOW - 100, "old")
    clock.advance(0.1)  # now = (NOW - 100) + 600
    assert not cache.seen_before(NOW - 100, "old")  # expired, so recorded afresh
    assert cache.seen_before(NOW + 100, "new")
    clock.advance(200)
    cache.seen_before(NOW, "probe")  # every call sweeps
    assert len(cache) == 1


def test_cache_cap_evicts_the_oldest_timestamp():
    cache = ReplayCache(max_entries=3, clock=FakeClock())
    cache.seen_before(NOW + 2, "c")
    cache.seen_before(NOW, "a")
    cache.seen_before(NOW + 1, "b")
    assert not cache.seen_before(NOW + 3, "d")  # evicts a
    assert len(cache) == 3
    assert cache.evicted == 1
    assert cache.seen_before(NOW + 1, "b")
    assert cache.seen_before(NOW + 2, "c")
    assert cache.seen_before(NOW + 3, "d")
    assert not cache.seen_before(NOW, "a")  # forgotten: the documented leniency


def test_cache_stays_bounded_under_a_flood():
    cache = ReplayCache(max_entries=100, clock=FakeClock())
    for i in range(10_000):
        cache.seen_before(NOW, f"{i:064x}")
        assert len(cache) <= 100


@pytest.mark.parametrize("kwargs", [{"window_s": 0}, {"max_entries": 0}, {"window_s": float("nan")}])
def test_cache_refuses_nonsense(kwargs):
    with pytest.raises(ValueError):
        ReplayCache(**kwargs)
