"""ViolationTracker: when repeated violations from one identifier call for forensic analysis."""

from __future__ import annotations

from system.forensic import ViolationTracker


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_the_threshold_within_the_window_triggers_once_then_again_after_a_window() -> None:
    clock = Clock()
    tracker = ViolationTracker(threshold=3, window_s=60, clock=clock)
    assert [tracker.record("a") for _ in range(2)] == [None, None]
    assert tracker.record("a") == 3
    assert tracker.record("a") is None  # already triggered in this window
    clock.now += 61
    assert [tracker.record("a") for _ in range(3)] == [None, None, 3]


def test_violations_spread_wider_than_the_window_never_trigger() -> None:
    clock = Clock()
    tracker = ViolationTracker(threshold=3, window_s=10, clock=clock)
    for _ in range(20):
        assert tracker.record("slow") is None
        clock.now += 6


def test_identifiers_are_counted_apart_and_memory_is_bounded() -> None:
    clock = Clock()
    tracker = ViolationTracker(threshold=2, window_s=60, max_identifiers=100, clock=clock)
    for i in range(1000):
        tracker.record(f"id-{i}")
    assert len(tracker) == 100
    assert tracker.record("id-999") == 2  # recent ones are still known
    assert tracker.record("id-0") is None  # long forgotten: starts again from one
