"""The worker's measure of a guard's pace leaves out the time it waited for a CPU."""

from __future__ import annotations

import os
import time

import pytest

from actors.guard_worker import runqueue_wait_s


@pytest.mark.skipif(not os.path.exists("/proc/self/schedstat"), reason="Linux schedstat only")
def test_runqueue_wait_is_seconds_that_never_go_back():
    first = runqueue_wait_s()
    assert first is not None and first >= 0
    deadline = time.monotonic() + 0.05
    while time.monotonic() < deadline:
        pass  # some CPU time, so the scheduler has had chances to make us wait
    second = runqueue_wait_s()
    assert second is not None and second >= first


def test_without_schedstat_the_wait_is_unknown(monkeypatch):
    def missing(*args, **kwargs):
        raise FileNotFoundError("/proc/self/schedstat")

    monkeypatch.setattr("builtins.open", missing)
    assert runqueue_wait_s() is None
