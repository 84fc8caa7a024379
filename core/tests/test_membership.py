"""Target selection by tags (Dkron's ``value:count`` syntax) and the retry preference."""

from __future__ import annotations

import itertools

from dkron.cluster.membership import Membership


def _members(*nodes: tuple[str, dict[str, str]]) -> Membership:
    membership = Membership()
    for name, tags in nodes:
        membership.heartbeat(name, f"127.0.0.1:{len(name)}", tags)
    return membership


def test_count_limits_the_matching_nodes_and_avoid_is_a_preference_not_a_ban():
    m = _members(("a1", {"pool": "web"}), ("a2", {"pool": "web"}), ("a3", {"pool": "db"}))
    assert {n.name for n in m.select({"pool": "web"})} == {"a1", "a2"}
    for _ in range(50):  # never the avoided one while another fits
        assert [n.name for n in m.select({"pool": "web:1"}, avoid=["a1"])] == ["a2"]
    assert {n.name for n in m.select({"pool": "web:2"}, avoid=["a1"])} == {"a1", "a2"}  # not enough others
    assert [n.name for n in m.select({"pool": "db:1"}, avoid=["a3"])] == ["a3"]  # the only match
    assert m.select({"pool": "none"}) == []


def test_runs_are_spread_evenly_over_the_matching_nodes():
    """The least recently chosen node goes first: 500 runs on 2 agents are 250 each (Dkron's random
    pick gives 270 and 230 as often as not), a node that joins gets its share at once, and a
    cardinality of 2 over 3 nodes rotates."""
    m = _members(("a1", {"pool": "web"}), ("a2", {"pool": "web"}), ("db", {"pool": "db"}))
    picks = [m.select({"pool": "web:1"})[0].name for _ in range(500)]
    assert picks.count("a1") == picks.count("a2") == 250
    assert all(a != b for a, b in itertools.pairwise(picks))  # strictly alternating
    m.heartbeat("a3", "127.0.0.1:9", {"pool": "web"})
    picks = [m.select({"pool": "web:1"})[0].name for _ in range(300)]
    assert picks[0] == "a3"  # never chosen: first in line, then in the rotation like the others
    assert picks.count("a1") == picks.count("a2") == picks.count("a3") == 100
    pairs = [frozenset(n.name for n in m.select({"pool": "web:2"})) for _ in range(300)]
    assert {pair: pairs.count(pair) for pair in set(pairs)} == {
        frozenset({"a1", "a2"}): 100,
        frozenset({"a2", "a3"}): 100,
        frozenset({"a1", "a3"}): 100,
    }


def test_nodes_taken_despite_avoid_count_as_chosen():
    """A retry that must reuse an avoided node still takes every preferred one: they all count
    as chosen, so the next pick goes to the node left out."""
    m = _members(("a1", {"pool": "web"}), ("a2", {"pool": "web"}), ("a3", {"pool": "web"}))
    assert [n.name for n in m.select({"pool": "web:1"}, avoid=["a1", "a2"])] == ["a3"]  # a3 first
    first, second = (m.select({"pool": "web:1"}, avoid=["a3"])[0].name for _ in range(2))
    assert {first, second} == {"a1", "a2"}
    # a3 and the least recently chosen of the avoided ones (first); second is left out.
    assert {n.name for n in m.select({"pool": "web:2"}, avoid=["a1", "a2"])} == {"a3", first}
    assert [n.name for n in m.select({"pool": "web:1"})] == [second]
