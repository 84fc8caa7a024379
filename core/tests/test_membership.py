"""Target selection by tags (Dkron's ``value:count`` syntax) and the retry preference."""

from __future__ import annotations

from dkron.cluster.membership import Membership


def _members(*nodes: tuple[str, dict[str, str]]) -> Membership:
    membership = Membership()
    for name, tags in nodes:
        membership.heartbeat(name, f"127.0.0.1:{len(name)}", tags)
    return membership


def test_count_limits_the_matching_nodes_and_avoid_is_a_preference_not_a_ban():
    m = _members(("a1", {"pool": "web"}), ("a2", {"pool": "web"}), ("a3", {"pool": "db"}))
    assert {n.name for n in m.select({"pool": "web"})} == {"a1", "a2"}
    for _ in range(50):  # random among the preferred: never the avoided one while another fits
        assert [n.name for n in m.select({"pool": "web:1"}, avoid=["a1"])] == ["a2"]
    assert {n.name for n in m.select({"pool": "web:2"}, avoid=["a1"])} == {"a1", "a2"}  # not enough others
    assert [n.name for n in m.select({"pool": "db:1"}, avoid=["a3"])] == ["a3"]  # the only match
    assert m.select({"pool": "none"}) == []
