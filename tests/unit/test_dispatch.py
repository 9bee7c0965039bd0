"""Dispatcher: pending requests, deadlines, credit batching and route changes, with fake clocks."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from actors.messages import CallBatch, CallGuard, Route
from system.dispatch import CREDIT_TIMEOUT_S, Dispatcher
from system.errors import RequestError
from system.routing import endpoint_for, transform_for
from system.validation import OrchestrateRequest


class Clocks:
    """A monotonic clock and a wall clock that move only when the test says so."""

    def __init__(self, mono: float = 100.0, wall: float = 1_700_000_000.0):
        self.mono = mono
        self.wall = wall

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds


def route(service: str, supervisor: Any = None, service_type: str = "tokenguard") -> Route:
    url = f"http://127.0.0.1:9/{service}"
    return Route(service, service_type, url, endpoint_for(service_type, url, {}), transform_for(service_type),
                 supervisor if supervisor is not None else f"sup-{service}")


def request(service: str = "a", request_id: str = "req-1", timeout: float = 30.0,
            payload: dict[str, Any] | None = None) -> OrchestrateRequest:
    return OrchestrateRequest(request_id, service, payload if payload is not None else {"text": "x"}, timeout)


def make(*routes: Route, max_in_flight: int = 100, max_per_service: int | None = None) -> tuple[Dispatcher, Clocks]:
    clocks = Clocks()
    dispatcher = Dispatcher("entry", max_in_flight, max_per_service, clock=lambda: clocks.mono,
                            wallclock=lambda: clocks.wall)
    dispatcher.set_routes(routes or [route("a"), route("b")])
    return dispatcher, clocks


# -- submit ----------------------------------------------------------------------------------------------------


def test_unknown_service_raises_request_error():
    dispatcher, _ = make()
    with pytest.raises(RequestError) as info:
        dispatcher.submit(request("nope", "req-9"), "origin")
    assert (info.value.code, info.value.request_id, info.value.service) == ("unknown_service", "req-9", "nope")
    assert dispatcher.in_flight == 0


def test_overloaded_once_max_in_flight_are_pending_and_free_again_after_finish():
    dispatcher, _ = make(max_in_flight=2)
    first = dispatcher.submit(request(), "o1")
    dispatcher.submit(request(), "o2")
    with pytest.raises(RequestError) as info:
        dispatcher.submit(request(), "o3")
    assert info.value.code == "overloaded"
    assert dispatcher.in_flight == 2
    dispatcher.finish(first.key)
    dispatcher.submit(request(), "o4")
    assert dispatcher.in_flight == 2


def test_one_service_cannot_take_more_than_its_share_of_the_in_flight_places():
    dispatcher, clocks = make(max_in_flight=4, max_per_service=3)
    held = [dispatcher.submit(request("a"), f"o{i}") for i in range(3)]
    with pytest.raises(RequestError) as info:
        dispatcher.submit(request("a"), "o4")
    assert info.value.code == "overloaded" and "to a" in info.value.message
    dispatcher.submit(request("b"), "o5")  # the other service still gets its place
    # Every way a request leaves frees its service's place: finish, expiry, and its route going away.
    dispatcher.finish(held[0].key)
    dispatcher.submit(request("a"), "o6")
    clocks.mono += 31
    assert len(dispatcher.expired()) == 4
    assert [dispatcher.submit(request("a"), f"p{i}").service for i in range(3)] == ["a"] * 3
    removed, _ = dispatcher.set_routes([route("b")])
    assert len(removed) == 3
    dispatcher.set_routes([route("a"), route("b")])
    assert dispatcher.submit(request("a"), "q").service == "a"


def test_pending_records_origin_times_supervisor_and_body_size():
    dispatcher, clocks = make()
    pending = dispatcher.submit(request("a", "req-7", timeout=2.5), "the-origin")
    assert pending.request_id == "req-7"
    assert pending.service == "a"
    assert pending.origin == "the-origin"
    assert pending.started == clocks.mono
    assert pending.deadline == clocks.mono + 2.5
    assert pending.supervisor == "sup-a"
    assert pending.payload_size == len(b'{"text":"x"}')


def test_keys_are_unique_even_for_equal_request_ids():
    dispatcher, _ = make()
    keys = {dispatcher.submit(request(request_id="same"), None).key for _ in range(5)}
    assert len(keys) == 5


def test_call_guard_carries_the_transformed_payload_as_json_and_a_wall_clock_expiry():
    dispatcher, clocks = make(route("tg", "sup", "tokenguard"), route("tr", "sup2", "trustguard"),
                              route("cg", "sup3", "contextguard"))
    dispatcher.submit(request("tg", "req-1", timeout=3, payload={"text": "hi"}), None)
    dispatcher.submit(request("tr", "req-2", timeout=4, payload={"text": "hi"}), None)
    dispatcher.submit(request("cg", "req-3", timeout=5, payload={"content": "c"}), None)
    calls = {batch.service: batch.calls[0] for _, batch in dispatcher.batches()}
    tg, tr, cg = calls["tg"], calls["tr"], calls["cg"]
    assert isinstance(tg, CallGuard)
    assert json.loads(tg.body) == {"text": "hi"}
    assert json.loads(tr.body) == {"text": "hi", "request_id": "req-2"}
    assert json.loads(cg.body) == {"content": "c", "text": "c"}
    assert tg.endpoint == "http://127.0.0.1:9/tg/scan"
    assert tr.endpoint == "http://127.0.0.1:9/tr/v1/validate"
    assert tg.expires_at == clocks.wall + 3
    assert tr.expires_at == clocks.wall + 4
    assert tg.reply_to == "entry"
    assert tg.request_id == "req-1"


def test_submit_does_not_mutate_the_callers_payload():
    dispatcher, _ = make(route("tr", service_type="trustguard"))
    payload = {"text": "hi"}
    dispatcher.submit(request("tr", payload=payload), None)
    assert payload == {"text": "hi"}


# -- credit batching -------------------------------------------------------------------------------------------


def test_first_submit_leaves_at_once_as_a_batch_of_one():
    dispatcher, _ = make()
    pending = dispatcher.submit(request("a"), None)
    out = dispatcher.batches()
    assert len(out) == 1
    supervisor, batch = out[0]
    assert supervisor == "sup-a"
    assert isinstance(batch, CallBatch)
    assert batch.service == "a"
    assert [c.key for c in batch.calls] == [pending.key]
    assert dispatcher.unacked_batches() == 1
    assert dispatcher.batches() == []


def test_later_submits_wait_for_the_credit_then_leave_together():
    dispatcher, _ = make()
    dispatcher.submit(request("a"), None)
    [(_, first)] = dispatcher.batches()
    second = dispatcher.submit(request("a"), None)
    third = dispatcher.submit(request("a"), None)
    assert dispatcher.batches() == []
    dispatcher.accepted("a", first.batch_id)
    assert dispatcher.unacked_batches() == 0
    [(supervisor, batch)] = dispatcher.batches()
    assert supervisor == "sup-a"
    assert [c.key for c in batch.calls] == [second.key, third.key]
    assert batch.batch_id != first.batch_id


def test_batches_for_two_services_are_independent():
    dispatcher, _ = make()
    dispatcher.submit(request("a"), None)
    dispatcher.submit(request("b"), None)
    sent = {batch.service: batch for _, batch in dispatcher.batches()}
    assert set(sent) == {"a", "b"}
    a2 = dispatcher.submit(request("a"), None)
    b2 = dispatcher.submit(request("b"), None)
    assert dispatcher.batches() == []
    dispatcher.accepted("b", sent["b"].batch_id)
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, batch.service, [c.key for c in batch.calls]) == ("sup-b", "b", [b2.key])
    dispatcher.accepted("a", sent["a"].batch_id)
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, batch.service, [c.key for c in batch.calls]) == ("sup-a", "a", [a2.key])


def test_a_stale_or_unknown_batch_id_does_not_release_credit():
    dispatcher, _ = make()
    dispatcher.submit(request("a"), None)
    dispatcher.submit(request("b"), None)
    sent = {batch.service: batch for _, batch in dispatcher.batches()}
    dispatcher.submit(request("a"), None)
    dispatcher.accepted("a", sent["a"].batch_id + 1000)
    dispatcher.accepted("a", sent["b"].batch_id)
    dispatcher.accepted("nope", sent["a"].batch_id)
    assert dispatcher.batches() == []
    dispatcher.accepted("a", sent["a"].batch_id)
    assert len(dispatcher.batches()) == 1


def test_a_repeated_credit_for_an_old_batch_does_not_release_the_next_one():
    dispatcher, _ = make()
    dispatcher.submit(request("a"), None)
    [(_, first)] = dispatcher.batches()
    dispatcher.accepted("a", first.batch_id)
    dispatcher.submit(request("a"), None)
    assert len(dispatcher.batches()) == 1
    dispatcher.submit(request("a"), None)
    dispatcher.accepted("a", first.batch_id)
    assert dispatcher.batches() == []


def test_credit_is_given_up_after_credit_timeout():
    dispatcher, clocks = make()
    dispatcher.submit(request("a", timeout=60), None)
    [(_, first)] = dispatcher.batches()
    waiting = dispatcher.submit(request("a", timeout=60), None)
    clocks.advance(CREDIT_TIMEOUT_S - 0.001)
    assert dispatcher.batches() == []
    clocks.advance(0.001)
    [(_, batch)] = dispatcher.batches()
    assert [c.key for c in batch.calls] == [waiting.key]
    # The late credit for the given-up batch no longer counts.
    dispatcher.submit(request("a", timeout=60), None)
    dispatcher.accepted("a", first.batch_id)
    assert dispatcher.batches() == []


def test_calls_answered_while_waiting_for_credit_are_not_sent():
    dispatcher, clocks = make()
    dispatcher.submit(request("a", timeout=60), None)
    [(_, first)] = dispatcher.batches()
    gone = dispatcher.submit(request("a", timeout=1), None)
    kept = dispatcher.submit(request("a", timeout=60), None)
    finished = dispatcher.submit(request("a", timeout=60), None)
    dispatcher.finish(finished.key)
    clocks.advance(1)
    assert [p.key for p in dispatcher.expired()] == [gone.key]
    dispatcher.accepted("a", first.batch_id)
    [(_, batch)] = dispatcher.batches()
    assert [c.key for c in batch.calls] == [kept.key]


def test_no_batch_and_credit_kept_free_when_every_waiting_call_is_gone():
    dispatcher, _ = make()
    dispatcher.submit(request("a"), None)
    [(_, first)] = dispatcher.batches()
    waiting = dispatcher.submit(request("a"), None)
    dispatcher.finish(waiting.key)
    dispatcher.accepted("a", first.batch_id)
    assert dispatcher.batches() == []
    assert dispatcher.unacked_batches() == 0


# -- finish, expiry and deadlines ------------------------------------------------------------------------------


def test_finish_hands_out_a_pending_request_exactly_once():
    dispatcher, _ = make()
    pending = dispatcher.submit(request(), "origin")
    assert dispatcher.finish(pending.key) is pending
    assert dispatcher.finish(pending.key) is None
    assert dispatcher.finish(12345) is None
    assert dispatcher.in_flight == 0


def test_expired_returns_requests_whose_deadline_passed_exactly_once():
    dispatcher, clocks = make()
    short = dispatcher.submit(request(timeout=1), None)
    long = dispatcher.submit(request(timeout=2), None)
    assert dispatcher.expired() == []
    clocks.advance(0.999)
    assert dispatcher.expired() == []
    clocks.advance(0.001)
    assert dispatcher.expired() == [short]
    assert dispatcher.expired() == []
    assert dispatcher.finish(short.key) is None
    clocks.advance(5)
    assert dispatcher.expired() == [long]
    assert dispatcher.in_flight == 0


def test_expired_never_returns_a_finished_request():
    dispatcher, clocks = make()
    done = dispatcher.submit(request(timeout=1), None)
    dispatcher.finish(done.key)
    clocks.advance(10)
    assert dispatcher.expired() == []


def test_expired_returns_them_in_deadline_order():
    dispatcher, clocks = make()
    late = dispatcher.submit(request(timeout=3), None)
    early = dispatcher.submit(request(timeout=1), None)
    middle = dispatcher.submit(request(timeout=2), None)
    clocks.advance(3)
    assert dispatcher.expired() == [early, middle, late]


def test_next_deadline_tracks_the_earliest_live_deadline():
    dispatcher, clocks = make()
    assert dispatcher.next_deadline() is None
    start = clocks.mono
    first = dispatcher.submit(request(timeout=5), None)
    second = dispatcher.submit(request(timeout=10), None)
    dispatcher.submit(request(timeout=1), None)
    assert dispatcher.next_deadline() == start + 1
    clocks.advance(1)
    dispatcher.expired()
    assert dispatcher.next_deadline() == start + 5
    dispatcher.finish(first.key)
    assert dispatcher.next_deadline() == start + 10
    dispatcher.finish(second.key)
    assert dispatcher.next_deadline() is None


def test_many_finished_requests_do_not_disturb_deadlines():
    dispatcher, clocks = make(max_in_flight=10_000)
    survivor = dispatcher.submit(request(timeout=50), None)
    for _ in range(3000):
        dispatcher.finish(dispatcher.submit(request(timeout=1), None).key)
    assert dispatcher.next_deadline() == survivor.deadline
    clocks.advance(50)
    assert dispatcher.expired() == [survivor]


# -- route changes ---------------------------------------------------------------------------------------------


def test_set_routes_returns_and_forgets_requests_whose_service_went_or_supervisor_changed():
    dispatcher, _ = make(route("a", "sup-1"), route("b", "sup-2"), route("c", "sup-3"))
    kept = dispatcher.submit(request("a"), None)
    moved = dispatcher.submit(request("b"), None)
    removed = dispatcher.submit(request("c"), None)
    also_removed = dispatcher.submit(request("c"), None)
    gone, replaced = dispatcher.set_routes([route("a", "sup-1"), route("b", "sup-2-new")])
    assert sorted(p.key for p in gone) == [removed.key, also_removed.key]
    assert [p.key for p in replaced] == [moved.key]
    assert dispatcher.in_flight == 1
    assert dispatcher.finish(moved.key) is None
    assert dispatcher.finish(removed.key) is None
    assert dispatcher.finish(kept.key) is kept
    assert set(dispatcher.routes) == {"a", "b"}


def test_set_routes_with_the_same_table_loses_nothing():
    dispatcher, _ = make()
    dispatcher.submit(request("a"), None)
    dispatcher.submit(request("b"), None)
    assert dispatcher.set_routes([route("a"), route("b")]) == ([], [])
    assert dispatcher.in_flight == 2


def test_a_moved_service_sends_to_its_new_supervisor_without_waiting_for_old_credit():
    dispatcher, _ = make(route("a", "sup-old"))
    sent = dispatcher.submit(request("a"), None)
    dispatcher.batches()
    stranded = dispatcher.submit(request("a"), None)
    assert dispatcher.set_routes([route("a", "sup-new")]) == ([], [sent, stranded])
    assert dispatcher.batches() == []  # the stranded call was handed back, not sent to the new supervisor
    assert dispatcher.finish(stranded.key) is None
    fresh = dispatcher.submit(request("a"), None)
    [(supervisor, batch)] = dispatcher.batches()
    assert supervisor == "sup-new"
    assert [c.key for c in batch.calls] == [fresh.key]


# -- route changes for a guard that moved to another node (``retiring``) ----------------------------------------


def sent_and_waiting(dispatcher: Dispatcher, service: str = "a") -> tuple[Any, Any, CallBatch]:
    """One request sent to the service's supervisor (its batch unacknowledged) and one waiting for the credit."""
    sent = dispatcher.submit(request(service, "req-sent"), "o-sent")
    [(_, batch)] = dispatcher.batches()
    waiting = dispatcher.submit(request(service, "req-waiting"), "o-waiting")
    assert dispatcher.batches() == []
    return sent, waiting, batch


def test_a_retiring_supervisor_keeps_what_it_took_and_the_unsent_calls_go_to_the_new_one():
    dispatcher, _ = make(route("a", "sup-old"), route("b", "sup-b"))
    sent, waiting, _ = sent_and_waiting(dispatcher)
    assert dispatcher.set_routes([route("a", "sup-new"), route("b", "sup-b")], retiring=["sup-old"]) == ([], [])
    assert dispatcher.in_flight == 2
    sent_now, waiting_now = dispatcher.pending(sent.key), dispatcher.pending(waiting.key)
    assert sent_now is not None and sent_now.supervisor == "sup-old"  # the old supervisor answers it
    assert waiting_now is not None and waiting_now.supervisor == "sup-new"
    # The waiting call leaves at once (no wait for the old supervisor's credit), to the new supervisor, once.
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, batch.service, [c.key for c in batch.calls]) == ("sup-new", "a", [waiting.key])
    assert dispatcher.batches() == []
    # The old supervisor's answer still finds its request.
    assert dispatcher.finish(sent.key) is sent
    assert dispatcher.finish(waiting.key) is waiting
    assert dispatcher.in_flight == 0


def test_after_a_retiring_switch_new_requests_go_to_the_new_supervisor_and_old_credit_does_not_count():
    dispatcher, _ = make(route("a", "sup-old"))
    _, waiting, old_batch = sent_and_waiting(dispatcher)
    dispatcher.set_routes([route("a", "sup-new")], retiring=["sup-old"])
    [(_, new_batch)] = dispatcher.batches()
    fresh = dispatcher.submit(request("a", "req-fresh"), None)
    assert fresh.supervisor == "sup-new"
    dispatcher.accepted("a", old_batch.batch_id)  # the retiring supervisor's late credit
    assert dispatcher.batches() == []
    dispatcher.accepted("a", new_batch.batch_id)
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, [c.key for c in batch.calls]) == ("sup-new", [fresh.key])
    assert waiting.key not in [c.key for c in batch.calls]


def test_a_later_table_without_the_retiring_supervisor_returns_what_it_still_holds_as_replaced():
    dispatcher, _ = make(route("a", "sup-old"))
    sent, waiting, _ = sent_and_waiting(dispatcher)
    dispatcher.set_routes([route("a", "sup-new")], retiring=["sup-old"])
    dispatcher.batches()
    # Still retiring: a table with the same routes keeps it pending.
    assert dispatcher.set_routes([route("a", "sup-new")], retiring=["sup-old"]) == ([], [])
    assert dispatcher.in_flight == 2
    # No longer retiring (it exited without answering): it is handed back; the one sent to the new one stays.
    assert dispatcher.set_routes([route("a", "sup-new")]) == ([], [sent])
    assert dispatcher.finish(sent.key) is None
    assert dispatcher.pending(waiting.key) is waiting
    assert dispatcher.in_flight == 1


def test_a_supervisor_not_in_retiring_strands_both_sent_and_unsent_requests():
    dispatcher, _ = make(route("a", "sup-old"))
    sent, waiting, _ = sent_and_waiting(dispatcher)
    # Another supervisor retiring does not keep this one's requests.
    assert dispatcher.set_routes([route("a", "sup-new")], retiring=["sup-elsewhere"]) == ([], [sent, waiting])
    assert dispatcher.in_flight == 0
    assert dispatcher.batches() == []  # the unsent call was handed back, not sent to the new supervisor
    assert dispatcher.finish(sent.key) is None
    assert dispatcher.finish(waiting.key) is None


def test_retiring_keeps_only_the_moved_guards_requests_when_several_change_at_once():
    dispatcher, _ = make(route("a", "sup-a"), route("b", "sup-b"))
    a_sent = dispatcher.submit(request("a"), None)
    b_sent = dispatcher.submit(request("b"), None)
    assert len(dispatcher.batches()) == 2
    a_waiting = dispatcher.submit(request("a"), None)
    b_waiting = dispatcher.submit(request("b"), None)
    removed, replaced = dispatcher.set_routes([route("a", "sup-a2"), route("b", "sup-b2")], retiring=["sup-a"])
    assert removed == []
    assert sorted(p.key for p in replaced) == [b_sent.key, b_waiting.key]
    assert dispatcher.pending(a_sent.key) is a_sent
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, batch.service, [c.key for c in batch.calls]) == ("sup-a2", "a", [a_waiting.key])


def test_a_retiring_supervisor_whose_service_is_gone_strands_its_requests_as_removed():
    dispatcher, _ = make(route("a", "sup-old"), route("b", "sup-b"))
    sent, waiting, _ = sent_and_waiting(dispatcher)
    removed, replaced = dispatcher.set_routes([route("b", "sup-b")], retiring=["sup-old"])
    assert (sorted(p.key for p in removed), replaced) == ([sent.key, waiting.key], [])
    assert dispatcher.in_flight == 0
    assert dispatcher.batches() == []


def test_unsent_calls_already_answered_are_not_sent_to_the_new_supervisor():
    dispatcher, clocks = make(route("a", "sup-old"))
    dispatcher.submit(request("a", timeout=60), None)
    dispatcher.batches()
    expiring = dispatcher.submit(request("a", timeout=1), None)
    kept = dispatcher.submit(request("a", timeout=60), None)
    clocks.advance(1)
    assert dispatcher.expired() == [expiring]
    dispatcher.set_routes([route("a", "sup-new")], retiring=["sup-old"])
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, [c.key for c in batch.calls]) == ("sup-new", [kept.key])


def test_a_guard_moving_twice_keeps_requests_of_both_retiring_supervisors():
    dispatcher, _ = make(route("a", "sup-1"))
    first, _, _ = sent_and_waiting(dispatcher)
    dispatcher.set_routes([route("a", "sup-2")], retiring=["sup-1"])
    [(supervisor, _)] = dispatcher.batches()
    assert supervisor == "sup-2"
    second = dispatcher.submit(request("a", "req-2"), None)  # waits for sup-2's credit
    assert dispatcher.set_routes([route("a", "sup-3")], retiring=["sup-1", "sup-2"]) == ([], [])
    assert dispatcher.in_flight == 3
    [(supervisor, batch)] = dispatcher.batches()
    assert (supervisor, [c.key for c in batch.calls]) == ("sup-3", [second.key])
    # sup-1 is gone for good; what it held is handed back, sup-2's is kept.
    _, replaced = dispatcher.set_routes([route("a", "sup-3")], retiring=["sup-2"])
    assert [p.key for p in replaced] == [first.key]
    assert dispatcher.in_flight == 2


def test_a_retiring_switch_clears_the_gate_the_old_supervisor_pushed():
    dispatcher, _ = make(route("a", "sup-old"))
    dispatcher.set_gate("a", "service_unavailable", "unhealthy")
    dispatcher.set_routes([route("a", "sup-new")], retiring=["sup-old"])
    assert dispatcher.submit(request("a"), "o1").supervisor == "sup-new"


def test_a_removed_service_is_unknown_afterwards():
    dispatcher, _ = make()
    dispatcher.set_routes([route("a")])
    with pytest.raises(RequestError, match="registered") as info:
        dispatcher.submit(request("b"), None)
    assert info.value.code == "unknown_service"


# -- property: every request is handed out at most once --------------------------------------------------------

SERVICES = ["a", "b"]

operations = st.lists(
    st.one_of(
        st.tuples(st.just("submit"), st.sampled_from(SERVICES), st.sampled_from([0.5, 1.0, 3.0, 10.0])),
        st.tuples(st.just("batches")),
        st.tuples(st.just("accept"), st.sampled_from(SERVICES), st.integers(min_value=0, max_value=30)),
        st.tuples(st.just("finish"), st.integers(min_value=0, max_value=60)),
        st.tuples(st.just("expire")),
        st.tuples(st.just("advance"), st.sampled_from([0.1, 0.5, 1.0, 2.0, CREDIT_TIMEOUT_S])),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_every_request_is_handed_out_at_most_once_and_in_flight_adds_up(ops):
    dispatcher, clocks = make(max_in_flight=20)
    submitted: list[int] = []
    deadlines: dict[int, float] = {}
    handed_out: list[int] = []
    sent_batches: list[int] = []
    sent_calls: dict[int, int] = {}
    for op in ops:
        if op[0] == "submit":
            try:
                pending = dispatcher.submit(request(op[1], timeout=op[2]), None)
                submitted.append(pending.key)
                deadlines[pending.key] = pending.deadline
            except RequestError as exc:
                assert exc.code == "overloaded"
                assert dispatcher.in_flight == 20
        elif op[0] == "batches":
            for supervisor, batch in dispatcher.batches():
                assert supervisor == f"sup-{batch.service}"
                assert batch.calls
                sent_batches.append(batch.batch_id)
                for call in batch.calls:
                    assert call.key not in handed_out
                    sent_calls[call.key] = sent_calls.get(call.key, 0) + 1
        elif op[0] == "accept":
            batch_id = sent_batches[op[2] % len(sent_batches)] if sent_batches else op[2]
            dispatcher.accepted(op[1], batch_id)
        elif op[0] == "finish":
            key = submitted[op[1] % len(submitted)] if submitted else op[1]
            pending = dispatcher.finish(key)
            if pending is not None:
                assert pending.key == key
                handed_out.append(key)
        elif op[0] == "expire":
            for pending in dispatcher.expired():
                assert pending.deadline <= clocks.mono
                handed_out.append(pending.key)
        else:
            clocks.advance(op[1])
        assert len(handed_out) == len(set(handed_out))
        assert set(handed_out) <= set(submitted)
        assert dispatcher.in_flight == len(submitted) - len(handed_out)
        live = set(submitted) - set(handed_out)
        assert dispatcher.next_deadline() == (min(deadlines[k] for k in live) if live else None)
    assert all(count == 1 for count in sent_calls.values())


def test_a_pushed_gate_refuses_at_the_entry_until_it_lapses_or_is_lifted():
    dispatcher, clocks = make()
    dispatcher.set_gate("a", "circuit_open", "a: the circuit breaker is open", until=clocks.wall + 5)
    with pytest.raises(RequestError) as info:
        dispatcher.submit(request("a"), "o1")
    assert (info.value.code, info.value.retry_after) == ("circuit_open", 5)
    assert dispatcher.in_flight == 0 and dispatcher.batches() == []
    dispatcher.submit(request("b"), "o2")  # other services are not touched
    clocks.wall += 5  # the open period is over: calls go to the supervisor again (it admits probes)
    dispatcher.submit(request("a"), "o3")
    dispatcher.set_gate("a", "service_unavailable", "unhealthy")  # no end: until lifted
    clocks.wall += 1000
    with pytest.raises(RequestError):
        dispatcher.submit(request("a"), "o4")
    dispatcher.set_gate("a", None)
    dispatcher.submit(request("a"), "o5")


def test_a_replaced_supervisor_clears_the_gate_its_predecessor_pushed():
    dispatcher, _ = make(route("a", "sup-1"))
    dispatcher.set_gate("a", "service_unavailable", "unhealthy")
    dispatcher.set_routes([route("a", "sup-2")])
    assert dispatcher.submit(request("a"), "o1").supervisor == "sup-2"
