"""Fanout: a stalled or dead subscriber never holds up the others, and memory stays bounded."""

from __future__ import annotations

from system.fanout import Fanout


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_each_subscriber_gets_what_it_wants_one_acknowledged_batch_at_a_time() -> None:
    fanout = Fanout(max_batch=2, clock=Clock())
    fanout.subscribe("a", frozenset())
    fanout.subscribe("b", frozenset({"X"}), handler="cli")
    assert fanout.publish("e1", "X") == ["actor", "cli"]
    assert fanout.publish("e2", "Y") == ["actor"]
    fanout.publish("e3", "X")
    batches = {key: (batch, events) for key, batch, events in fanout.ready()}
    assert batches["a"][1] == ("e1", "e2") and batches["b"][1] == ("e1", "e3")
    assert fanout.ready() == []  # nothing more until acknowledged
    fanout.ack("a", batches["a"][0])
    assert [(key, events) for key, _, events in fanout.ready()] == [("a", ("e3",))]


def test_a_stalled_subscriber_only_fills_its_own_bounded_queue() -> None:
    fanout = Fanout(max_queue=3, max_batch=10, clock=Clock())
    fanout.subscribe("stuck", frozenset())
    fanout.subscribe("fine", frozenset())
    for i in range(10):
        fanout.publish(i, "X")
        for key, batch, _ in fanout.ready():
            if key == "fine":
                fanout.ack(key, batch)
    stuck = next(s for s in fanout.describe() if s["dropped"])
    assert stuck["queued"] == 3 and stuck["dropped"] == 6
    assert fanout.dropped_events == 6
    # The healthy one got every event.
    assert next(s for s in fanout.describe() if not s["dropped"])["delivered"] == 10


def test_a_subscriber_that_never_acknowledges_is_removed_after_the_timeout() -> None:
    clock = Clock()
    fanout = Fanout(ack_timeout_s=30, clock=clock)
    fanout.subscribe("gone", frozenset())
    fanout.publish("e", "X")
    fanout.ready()
    clock.now = 29
    assert fanout.expire() == [] and fanout.waiting_for_acks()
    clock.now = 31
    assert fanout.expire() == ["gone"]
    assert len(fanout) == 0 and fanout.removed_subscribers == 1
    assert fanout.publish("later", "X") == []


def test_a_stale_acknowledgement_does_not_release_the_next_batch() -> None:
    fanout = Fanout(max_batch=1, clock=Clock())
    fanout.subscribe("a", frozenset())
    fanout.publish("e1", "X")
    fanout.publish("e2", "X")
    [(_, first, _)] = fanout.ready()
    fanout.ack("a", first)
    [(_, second, _)] = fanout.ready()
    fanout.ack("a", first)  # again, late
    assert fanout.ready() == []
    fanout.ack("a", second)
    assert fanout.wanted() == {"*"}
