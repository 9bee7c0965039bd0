"""Request signing for ``POST /v1/orchestrate``: HMAC-SHA256 over the timestamp and the raw body, with replay refusal.

The contract: headers ``X-Aeyon-Timestamp: <unix seconds>`` and
``X-Aeyon-Signature: sha256=<hex HMAC-SHA256(key, timestamp + "." + raw body)>``, compared in constant time; a
timestamp more than ``SKEW_S`` from now is refused, and so is a (timestamp, signature) pair seen before. Every
refusal is ``401 unauthorized``; ``SignatureChecker.check`` says why in a few words that never include the expected
signature.

The timestamp signed is the header's text as sent, so a client need not format it the way the server would.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import re
import time
from collections.abc import Callable

SKEW_S = 300
TIMESTAMP_HEADER = "X-Aeyon-Timestamp"
SIGNATURE_HEADER = "X-Aeyon-Signature"
SIGNATURE_PREFIX = "sha256="

_DIGITS = re.compile(r"[0-9]+")
_SIGNATURE = re.compile(r"sha256=([0-9a-f]{64})", re.IGNORECASE)
# Unix seconds have 10 digits until the year 2286; more than this is far outside the window, and never worth an
# int() of a long attacker-chosen string.
_MAX_TIMESTAMP_DIGITS = 15


def _key_bytes(key: str | bytes) -> bytes:
    raw = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    if not raw:
        raise ValueError("the signing key must not be empty")
    return raw


def _digest(key: bytes, timestamp: str, body: bytes) -> str:
    return hmac.new(key, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


class ReplayCache:
    """The (timestamp, signature) pairs already accepted, each kept until ``window_s`` after its timestamp.

    A pair is accepted by the timestamp check only until ``timestamp + SKEW_S``, so remembering it longer is useless;
    the default ``2 * SKEW_S`` leaves a margin over that. At ``max_entries`` the pair with the oldest timestamp (the
    next to expire) is evicted; a replay of an evicted pair inside its window would then pass. The cap is sized far
    above any real rate (a million pairs in ten minutes is over 1,600 signed requests a second) so that only a flood
    could cause that, and the flood's memory stays bounded.
    """

    def __init__(self, window_s: float = 2 * SKEW_S, max_entries: int = 1_000_000,
                 clock: Callable[[], float] = time.time):
        if not window_s > 0:
            raise ValueError(f"window_s must be positive, not {window_s!r}")
        if isinstance(max_entries, bool) or not max_entries >= 1:
            raise ValueError(f"max_entries must be at least 1, not {max_entries!r}")
        self.window_s = window_s
        self.max_entries = max_entries
        self._now = clock
        self._seen: set[tuple[int, str]] = set()
        # (expires_at, timestamp, signature), earliest expiry first; one entry per pair in _seen.
        self._expiry: list[tuple[float, int, str]] = []
        self.evicted = 0  # pairs dropped by the cap before they expired

    def __len__(self) -> int:
        """Pairs remembered (expired ones may linger until the next call)."""
        return len(self._seen)

    def seen_before(self, timestamp: int, signature: str) -> bool:
        """Record the pair; True if it was already recorded and has not expired."""
        self._expire(self._now())
        key = (timestamp, signature)
        if key in self._seen:
            return True
        while len(self._seen) >= self.max_entries:
            _, old_timestamp, old_signature = heapq.heappop(self._expiry)
            self._seen.discard((old_timestamp, old_signature))
            self.evicted += 1
        self._seen.add(key)
        heapq.heappush(self._expiry, (timestamp + self.window_s, timestamp, signature))
        return False

    def _expire(self, now: float) -> None:
        expiry = self._expiry
        while expiry and expiry[0][0] <= now:
            _, timestamp, signature = heapq.heappop(expiry)
            self._seen.discard((timestamp, signature))


class Signer:
    """Signs request bodies with the shared key: for clients, tests and the reference tooling."""

    def __init__(self, key: str | bytes):
        self._key = _key_bytes(key)

    def signature(self, timestamp: str, body: bytes) -> str:
        """The lowercase hex HMAC-SHA256 of ``timestamp + "." + body``."""
        return _digest(self._key, timestamp, body)

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        """The two signing headers for ``body``, stamped ``timestamp`` (default: now, in whole unix seconds)."""
        stamp = str(int(time.time()) if timestamp is None else timestamp)
        return {
            TIMESTAMP_HEADER: stamp,
            SIGNATURE_HEADER: SIGNATURE_PREFIX + self.signature(stamp, body),
        }


class SignatureChecker:
    """Checks the signing headers of a request against the shared key, the clock and the replay cache."""

    def __init__(self, key: str | bytes, clock: Callable[[], float] = time.time, replay: ReplayCache | None = None):
        self._key = _key_bytes(key)
        self._now = clock
        self.replay = replay if replay is not None else ReplayCache(clock=clock)

    def check(self, timestamp_header: str | None, signature_header: str | None, body: bytes) -> str | None:
        """None when the request is signed, fresh and new; else a short reason for the 401's message."""
        if timestamp_header is None:
            return f"missing {TIMESTAMP_HEADER}"
        if signature_header is None:
            return f"missing {SIGNATURE_HEADER}"
        stamp = timestamp_header.strip()
        # ASCII digits only: str.isdigit() would take superscripts or Arabic-Indic digits, and a sign is never needed.
        if not _DIGITS.fullmatch(stamp):
            return f"{TIMESTAMP_HEADER} is not unix seconds"
        if len(stamp) > _MAX_TIMESTAMP_DIGITS:
            return f"timestamp outside the {SKEW_S} s window"
        timestamp = int(stamp)
        if not abs(self._now() - timestamp) <= SKEW_S:
            return f"timestamp outside the {SKEW_S} s window"
        match = _SIGNATURE.fullmatch(signature_header.strip())
        if match is None:
            return f"{SIGNATURE_HEADER} is not {SIGNATURE_PREFIX}<hex>"
        given = match.group(1).lower()
        # Looked up on the module at each call, so a test can watch it being used.
        if not hmac.compare_digest(_digest(self._key, stamp, body), given):
            return "signature mismatch"
        # Only a verified pair is recorded: forged pairs must not fill the cache or evict genuine ones.
        if self.replay.seen_before(timestamp, given):
            return "signature already used (replay)"
        return None
