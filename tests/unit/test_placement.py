"""Placement: where each guard's supervisor runs (the leader or a member), joins, losses and the capability check."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from system.placement import (
    ANY_GUARD,
    GUARDS_CAPABILITY,
    LEADER,
    NODE_CAPABILITY,
    Member,
    Placement,
    format_guards,
    node_capability_check,
    parse_guards,
)


def member(name: str, guards: str = ANY_GUARD, admin: str | None = None) -> Member:
    return Member(name, admin if admin is not None else f"admin-{name}", parse_guards(guards))


def placement(*members: Member) -> Placement:
    out = Placement()
    for each in members:
        out.join(each)
    return out


# -- guards lists ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "parsed", "formatted"),
    [
        ("*", None, "*"),
        ("", None, "*"),
        (" , ", None, "*"),
        ("a, b", frozenset({"a", "b"}), "a,b"),
        (" b ,a,,a ", frozenset({"a", "b"}), "a,b"),
        ("tokenguard, *", None, "*"),
    ],
)
def test_parse_guards_and_format_guards(text, parsed, formatted):
    assert parse_guards(text) == parsed
    assert format_guards(parse_guards(text)) == formatted
    assert parse_guards(format_guards(parse_guards(text))) == parsed  # the round trip is stable


# -- members from capabilities ---------------------------------------------------------------------------------


def test_member_from_capabilities_reads_name_and_guards():
    found = Member.from_capabilities("adm", {NODE_CAPABILITY: "node-1", GUARDS_CAPABILITY: "trustguard, tokenguard"})
    assert found == Member("node-1", "adm", frozenset({"tokenguard", "trustguard"}))
    assert found is not None and found.may_host("tokenguard") and not found.may_host("biasguard")


def test_member_from_capabilities_without_guards_may_host_any_guard():
    found = Member.from_capabilities("adm", {NODE_CAPABILITY: "node-1"})
    assert found == Member("node-1", "adm", None)
    assert found is not None and found.may_host("anything")
    star = Member.from_capabilities("adm", {NODE_CAPABILITY: "node-1", GUARDS_CAPABILITY: "*"})
    assert star is not None and star.guards is None


@pytest.mark.parametrize(
    "capabilities",
    [
        {NODE_CAPABILITY: LEADER, GUARDS_CAPABILITY: "*"},
        {GUARDS_CAPABILITY: "*"},
        {NODE_CAPABILITY: ""},
        {NODE_CAPABILITY: 7},
        {NODE_CAPABILITY: None},
        # What a Thespian system that is no Aeyon node (a Gateway client, say) advertises.
        {"Thespian ActorSystem Name": "multiprocTCPBase", "Thespian ActorSystem Version": 2,
         "Thespian Watch Supported": True, "Python Version": (3, 10, 0), "Admin Port": 1900,
         "Convention Address.IPv4": ("127.0.0.1", 1900)},
        {},
    ],
)
def test_member_from_capabilities_is_none_for_what_is_no_member(capabilities):
    assert Member.from_capabilities("adm", capabilities) is None


# -- choose ----------------------------------------------------------------------------------------------------


def test_choose_is_the_leader_without_members():
    assert placement().choose("tokenguard") == LEADER


def test_choose_is_the_leader_when_no_member_may_host_the_guard():
    places = placement(member("m1", "trustguard"), member("m2", "biasguard"))
    assert places.choose("tokenguard") == LEADER
    assert places.choose("trustguard") == "m1"


def test_choose_spreads_guards_by_load_with_ties_by_name():
    places = placement(member("m-b"), member("m-a"), member("m-c"))
    chosen = []
    for service in ["g1", "g2", "g3", "g4", "g5"]:
        node = places.choose(service)
        places.place(service, node)
        chosen.append(node)
    assert chosen == ["m-a", "m-b", "m-c", "m-a", "m-b"]
    assert [places.load(n) for n in ["m-a", "m-b", "m-c", LEADER]] == [2, 2, 1, 0]


def test_choose_ignores_members_that_may_not_host_the_guard_even_when_idle():
    places = placement(member("busy"), member("idle", "trustguard"))
    for service in ["g1", "g2", "g3"]:
        places.place(service, "busy")
    assert places.choose("tokenguard") == "busy"
    assert places.choose("trustguard") == "idle"


def test_choose_does_not_count_the_service_itself_on_its_current_member():
    places = placement(member("m2"), member("m1"))
    places.place("svc", "m2")
    # Counting itself, m2 would hold 1 guard and m1 none; without it, m2 ties with m1 ... and m1 wins by name.
    assert places.choose("svc") == "m1"
    places.place("other", "m1")
    # Now m1 holds "other" and m2 only "svc": "svc" stays where it is rather than moving to an equal place.
    assert places.choose("svc") == "m2"
    assert places.choose("new") == "m1"  # a new guard sees m1: 1, m2: 1 -> tie by name


def test_choose_does_not_record_a_place():
    places = placement(member("m1"))
    assert places.choose("svc") == "m1"
    assert places.node_of("svc") == LEADER
    assert places.nodes == {}


def test_place_node_of_and_forget():
    places = placement(member("m1"))
    assert places.node_of("svc") == LEADER  # never placed: the leader
    places.place("svc", "m1")
    assert places.node_of("svc") == "m1"
    places.forget("svc")
    places.forget("never-placed")
    assert places.node_of("svc") == LEADER
    assert places.nodes == {}


# -- joins: moves ----------------------------------------------------------------------------------------------


def test_moves_takes_guards_on_the_leader_that_the_new_member_may_host():
    places = Placement()
    for service in ["tokenguard", "trustguard", "biasguard"]:
        places.place(service, places.choose(service))
    assert places.nodes == {"tokenguard": LEADER, "trustguard": LEADER, "biasguard": LEADER}
    places.join(member("m1", "trustguard, tokenguard"))
    assert places.moves(["trustguard", "tokenguard", "biasguard"]) == [("tokenguard", "m1"), ("trustguard", "m1")]
    assert places.nodes == {"tokenguard": "m1", "trustguard": "m1", "biasguard": LEADER}


def test_moves_counts_never_placed_services_as_on_the_leader():
    places = placement(member("m1"))
    assert places.moves(["svc"]) == [("svc", "m1")]
    assert places.node_of("svc") == "m1"


def test_moves_spreads_over_members_and_leaves_guards_already_on_a_member():
    places = placement(member("m1"))
    for service in ["g1", "g2"]:
        places.place(service, "m1")
    for service in ["g3", "g4", "g5"]:
        places.place(service, LEADER)
    places.join(member("m2"))
    # g1 and g2 stay on m1 (even though m2 is emptier); g3..g5 leave the leader, spread by load then name.
    assert places.moves(["g1", "g2", "g3", "g4", "g5"]) == [("g3", "m2"), ("g4", "m2"), ("g5", "m1")]
    assert places.on_member("m1") == ["g1", "g2", "g5"]
    assert places.on_member("m2") == ["g3", "g4"]
    assert places.node_of("g1") == "m1"


def test_members_that_join_one_after_the_other_share_the_guards():
    places = Placement()
    guards = ["g1", "g2", "g3", "g4", "g5", "g6"]
    for service in guards:
        places.place(service, LEADER)
    places.join(member("m1"))
    assert places.moves(guards) == [(g, "m1") for g in guards]
    places.join(member("m2"))
    # m1 has six, m2 none: guards move until the loads differ by less than two, first by name.
    assert places.moves(guards) == [("g1", "m2"), ("g2", "m2"), ("g3", "m2")]
    assert places.on_member("m1") == ["g4", "g5", "g6"]
    places.join(member("m3", "g6"))
    # m3 may host g6 only: it takes g6 (m1 had one more than m2), and nothing else moves.
    assert places.moves(guards) == [("g6", "m3")]
    assert places.moves(guards) == []  # balanced: a second call moves nothing


def test_balancing_moves_only_what_the_emptier_member_may_host():
    places = placement(member("m1"), member("m2", "g9"))
    for service in ["g1", "g2", "g3", "g4"]:
        places.place(service, "m1")
    assert places.moves(["g1", "g2", "g3", "g4"]) == []
    assert places.on_member("m2") == []


def test_moves_is_empty_when_nothing_can_move_and_records_nothing():
    places = placement(member("m1", "trustguard"))
    places.place("tokenguard", LEADER)
    assert places.moves(["tokenguard"]) == []
    assert places.moves([]) == []
    assert places.nodes == {"tokenguard": LEADER}


# -- losses ----------------------------------------------------------------------------------------------------


def test_lost_returns_the_member_and_forgets_it():
    m1, m2 = member("m1", admin="adm-1"), member("m2", admin="adm-2")
    places = placement(m1, m2)
    places.place("g1", "m1")
    places.place("g2", "m1")
    places.place("g3", "m2")
    assert places.member_at("adm-1") == m1
    assert places.lost("adm-1") == m1
    assert places.member_at("adm-1") is None
    assert set(places.members) == {"m2"}
    assert places.lost("adm-1") is None  # a second loss of it, or of an unknown admin, finds nothing
    assert places.lost("nobody") is None
    # Its services are still listed against it until the root places them again...
    assert places.on_member("m1") == ["g1", "g2"]
    # ... and placing them again never picks the lost member.
    for service in places.on_member("m1"):
        places.place(service, places.choose(service))
    assert places.nodes == {"g1": "m2", "g2": "m2", "g3": "m2"}
    assert places.on_member("m1") == []


def test_guards_of_a_lost_member_fall_back_to_the_leader_when_no_member_may_host_them():
    places = placement(member("m1", "tokenguard"), member("m2", "trustguard"))
    places.place("tokenguard", places.choose("tokenguard"))
    assert places.node_of("tokenguard") == "m1"
    places.lost("admin-m1")
    assert places.choose("tokenguard") == LEADER


def test_on_member_lists_its_services_sorted():
    places = placement(member("m1"), member("m2"))
    for service, node in [("zeta", "m1"), ("alpha", "m1"), ("mid", "m2"), ("lead", LEADER)]:
        places.place(service, node)
    assert places.on_member("m1") == ["alpha", "zeta"]
    assert places.on_member("m2") == ["mid"]
    assert places.on_member("m3") == []


# -- requirements, describe ------------------------------------------------------------------------------------


def test_requirements_name_the_member_and_none_for_the_leader():
    places = Placement()
    assert places.requirements(LEADER) is None
    assert places.requirements("m1") == {NODE_CAPABILITY: "m1"}


def test_describe_lists_members_by_name_with_what_they_may_host_and_host():
    places = placement(member("m2", "trustguard,tokenguard"), member("m1"))
    places.place("tokenguard", "m2")
    places.place("biasguard", LEADER)
    places.place("healthguard", "m1")
    places.place("contextguard", "m1")
    assert places.describe() == {
        "members": [
            {"name": "m1", "guards": "*", "hosting": ["contextguard", "healthguard"]},
            {"name": "m2", "guards": "tokenguard,trustguard", "hosting": ["tokenguard"]},
        ],
        "placement": {"biasguard": LEADER, "contextguard": "m1", "healthguard": "m1", "tokenguard": "m2"},
    }
    assert list(places.describe()["placement"]) == ["biasguard", "contextguard", "healthguard", "tokenguard"]


def test_describe_when_empty():
    assert Placement().describe() == {"members": [], "placement": {}}


# -- the capability check --------------------------------------------------------------------------------------


@pytest.mark.parametrize("requirements", [None, {}, {"something else": 1}])
@pytest.mark.parametrize("capabilities", [{}, {NODE_CAPABILITY: LEADER}, {NODE_CAPABILITY: "m1"}])
def test_node_capability_check_without_a_node_requirement_is_true_anywhere(capabilities, requirements):
    assert node_capability_check(capabilities, requirements) is True


def test_node_capability_check_with_a_node_requirement_matches_only_that_node():
    wanted = Placement().requirements("m1")
    assert wanted is not None
    assert node_capability_check({NODE_CAPABILITY: "m1", GUARDS_CAPABILITY: "*"}, wanted) is True
    assert node_capability_check({NODE_CAPABILITY: "m2"}, wanted) is False
    assert node_capability_check({NODE_CAPABILITY: LEADER}, wanted) is False
    assert node_capability_check({}, wanted) is False


# -- property: choose never picks a member that cannot host the guard, nor a lost one ---------------------------

NAMES = ["m1", "m2", "m3"]
SERVICES = ["tokenguard", "trustguard", "biasguard", "healthguard"]
GUARD_SETS = st.one_of(st.just(ANY_GUARD), st.sets(st.sampled_from(SERVICES)).map(lambda s: ",".join(sorted(s))))

events = st.lists(
    st.one_of(
        st.tuples(st.just("join"), st.sampled_from(NAMES), GUARD_SETS),
        st.tuples(st.just("lose"), st.sampled_from(NAMES)),
        st.tuples(st.just("register"), st.sampled_from(SERVICES)),
        st.tuples(st.just("unregister"), st.sampled_from(SERVICES)),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(events)
def test_choose_never_returns_a_member_that_cannot_host_the_guard_or_a_lost_one(steps):
    places = Placement()
    live: dict[str, Member] = {}
    lost: set[str] = set()
    generation = 0
    registered: set[str] = set()
    for step in steps:
        if step[0] == "join":
            _, name, guards = step
            if name in live:
                continue  # Thespian reports a member lost before the same one is added again
            generation += 1
            joined = member(name, guards, admin=f"adm-{name}-{generation}")
            places.join(joined)
            live[name] = joined
            lost.discard(name)
            # What the root does on a join: guards move to members that may host them (the joiner, or another one
            # when balancing), and afterwards no member has two guards more than another that may host one of them.
            for service, node in places.moves(registered):
                assert node in live and live[node].may_host(service)
            for busy in live.values():
                for service in places.on_member(busy.name):
                    assert not any(other.may_host(service)
                                   and places.load(busy.name) - places.load(other.name) >= 2
                                   for other in live.values())
        elif step[0] == "lose":
            gone = live.pop(step[1], None)
            assert places.lost(gone.admin if gone is not None else "unknown") == gone
            if gone is not None:
                lost.add(gone.name)
                # What the root does on a loss: place its guards again.
                for service in places.on_member(gone.name):
                    places.place(service, places.choose(service))
        elif step[0] == "register":
            registered.add(step[1])
            places.place(step[1], places.choose(step[1]))
        else:
            registered.discard(step[1])
            places.forget(step[1])
        assert set(places.members) == set(live)
        for service in SERVICES:
            node = places.choose(service)
            assert node not in lost
            assert node == LEADER or (node in live and live[node].may_host(service))
            if node == LEADER:
                assert not any(m.may_host(service) for m in live.values())
        # Every registered guard has a place on the leader or on a live member that may host it.
        assert set(places.nodes) == registered
        for service, node in places.nodes.items():
            assert node == LEADER or (node in live and live[node].may_host(service))
