"""``dkron.testing.free_port``: the ports test clusters are started and restarted on."""

from __future__ import annotations

import socket

from dkron import testing


def test_ports_are_below_the_ephemeral_range_distinct_and_bindable() -> None:
    # A port from the ephemeral range can be taken by any outgoing connection before the node
    # binds it (or binds it again after a restart); CI lost a Raft port that way.
    ephemeral_low = testing._ephemeral_low()
    ports = [testing.free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(port < ephemeral_low for port in ports), sorted(ports)[-5:]
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


class _Picks:
    """Stands in for the random source: offers the given ports in order."""

    def __init__(self, *ports: int) -> None:
        self.ports = list(ports)

    def randrange(self, low: int, high: int) -> int:
        return self.ports.pop(0)


def test_a_port_someone_listens_on_or_handed_out_is_skipped(monkeypatch) -> None:
    listened, handed = testing.free_port(), testing.free_port()
    fresh = testing.free_port()
    testing._handed_out.difference_update({listened, fresh})  # only the listener guards it
    with socket.create_server(("127.0.0.1", listened)):
        monkeypatch.setattr(testing, "_port_random", _Picks(listened, handed, fresh))
        assert testing.free_port() == fresh
