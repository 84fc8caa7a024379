"""Who is in the cluster, and who is alive: the leader's view, fed by agent heartbeats.

Membership of agents is not gossip (Dkron uses Serf): every node registers with the servers over
gRPC and heartbeats every ``interval`` seconds, as Nomad's clients do. The leader marks a node
``failed`` after ``timeout`` without a heartbeat, and ``left`` when it leaves gracefully. This
state is soft: a new leader rebuilds it from the next round of heartbeats (within one interval).

Target selection follows Dkron's tag syntax: a job tag ``"pool": "web:2"`` selects nodes whose
tag ``pool`` is ``web``, at most 2 of them (the smallest count over the job's tags applies).
Unlike Dkron, a job without any tags runs on ONE alive node, not on every node (a surprise
fan-out users report); tags without a count keep Dkron's meaning (every matching node). No match
fails the run loudly instead of only logging it. Among the matching nodes the leader takes the
ones it chose least recently (Dkron picks at random), so the runs due in the same second are
spread evenly: two agents get 250 each of 500, not 270 and 230.
"""

from __future__ import annotations

import heapq
import itertools
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

_COUNT = re.compile(r"^(?P<value>.*?)(?::(?P<count>\d+))?$")


@dataclass
class Node:
    name: str
    rpc_addr: str
    tags: dict[str, str] = field(default_factory=dict)
    is_server: bool = False
    version: str = ""
    status: str = "alive"  # alive | failed | left
    last_seen: float = 0.0
    running: tuple[str, ...] = ()
    #: Wall-clock time (this server's) of the last heartbeat that listed ``running``; 0 = none
    #: since this server started tracking the node. A run missing from a list sent before the
    #: run started proves nothing, so the reaper only trusts lists reported after it.
    reported_wall: float = 0.0
    #: Its registration is committed through Raft, so the followers' ``/v1/members`` and a next
    #: leader know it. False while that write has not succeeded (e.g. it registered while the
    #: servers had no quorum yet): the leader's reaper writes it again.
    registered: bool = False

    def as_member(self, leader_name: str | None) -> dict[str, Any]:
        host, _, port = self.rpc_addr.rpartition(":")
        return {
            "Name": self.name,
            "id": self.name,
            "Addr": host,
            "Port": int(port) if port.isdigit() else 0,
            "Tags": {
                **self.tags,
                "server": str(self.is_server).lower(),
                "version": self.version,
                "rpc_addr": self.rpc_addr,
            },
            "Status": {"alive": 1, "left": 3, "failed": 4}.get(self.status, 0),
            "statusText": self.status,
            "leader": self.name == leader_name,
        }


def parse_job_tags(tags: Mapping[str, str]) -> tuple[dict[str, str], int | None]:
    """Split Dkron's ``value:count`` tags into plain values and the cardinality (None = unset)."""
    values: dict[str, str] = {}
    counts: list[int] = []
    for key, raw in tags.items():
        match = _COUNT.match(raw)
        assert match is not None  # the pattern matches every string
        values[key] = match.group("value")
        if match.group("count") is not None:
            counts.append(int(match.group("count")))
    return values, (min(counts) if counts else None)


class Membership:
    def __init__(self, *, timeout: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self.base_timeout = timeout
        self.clock = clock
        self._nodes: dict[str, Node] = {}
        self._lock = threading.Lock()
        self._rng = random.Random()
        #: When each node was last chosen as a target (a sequence number): the least recently
        #: chosen go first, so load is spread evenly; ties (never chosen) are broken at random.
        self._last_chosen: dict[str, int] = {}
        self._choices = itertools.count()

    def interval_for_size(self, base: float, max_rate: float = 500.0) -> float:
        """Heartbeat interval for the current size: at most ``max_rate`` heartbeats a second
        reach the leader. The failure timeout stretches with it (five intervals)."""
        with self._lock:
            size = len(self._nodes)
        interval = max(base, size / max_rate)
        self.timeout = max(self.base_timeout, 5 * interval)
        return interval

    def heartbeat(
        self,
        name: str,
        rpc_addr: str,
        tags: Mapping[str, str] | None = None,
        *,
        is_server: bool = False,
        version: str = "",
        running: Iterable[str] | None = None,
    ) -> Node:
        with self._lock:
            node = self._nodes.get(name)
            if node is None:
                node = self._nodes[name] = Node(name, rpc_addr)
            node.rpc_addr = rpc_addr
            if tags is not None:
                node.tags = dict(tags)
            node.is_server = is_server
            node.version = version or node.version
            node.status = "alive"
            node.last_seen = self.clock()
            if running is not None:  # a heartbeat, not a registration
                node.running = tuple(running)
                node.reported_wall = time.time()
            return node

    def reset(self, registered: Iterable[Mapping[str, Any]], keep: str | None = None) -> None:
        """A new leader starts from the registered nodes, all presumed alive: a node that is
        really gone is marked failed one ``timeout`` later, like any silent node. ``keep`` (this
        node) stays whatever the store says, so a concurrent selection never misses it."""
        now = self.clock()
        with self._lock:
            kept = self._nodes.get(keep) if keep else None
            self._nodes = {
                n["name"]: Node(
                    n["name"],
                    n["rpc_addr"],
                    dict(n["tags"]),
                    n["is_server"],
                    n.get("version", ""),
                    "left" if n.get("status") == "left" else "alive",
                    now,
                    registered=True,
                )
                for n in registered
            }
            if kept is not None and keep not in self._nodes:
                self._nodes[keep] = kept

    def leave(self, name: str) -> bool:
        with self._lock:
            node = self._nodes.get(name)
            if node is None:
                return False
            node.status = "left"
            return True

    def expire(self) -> list[Node]:
        """Mark nodes silent for longer than ``timeout`` as failed; return the newly failed."""
        now = self.clock()
        failed = []
        with self._lock:
            for node in self._nodes.values():
                if node.status == "alive" and now - node.last_seen > self.timeout:
                    node.status = "failed"
                    failed.append(node)
        return failed

    def unregistered(self) -> list[Node]:
        """Alive nodes whose registration is not committed yet (see ``Node.registered``)."""
        with self._lock:
            return [node for node in self._nodes.values() if node.status == "alive" and not node.registered]

    def get(self, name: str) -> Node | None:
        with self._lock:
            return self._nodes.get(name)

    def nodes(self) -> list[Node]:
        with self._lock:
            return sorted(self._nodes.values(), key=lambda n: (not n.is_server, n.name))

    def forget(self, name: str) -> None:
        with self._lock:
            self._nodes.pop(name, None)
            self._last_chosen.pop(name, None)

    def select(self, job_tags: Mapping[str, str], avoid: Iterable[str] = ()) -> list[Node]:
        """Alive nodes for a job's tags: one node for a job without tags, else Dkron's rules.

        Nodes named in ``avoid`` (e.g. where the failed attempt of a retry ran) are taken only
        when there are not enough others."""
        wanted, count = parse_job_tags(job_tags)
        with self._lock:
            eligible = [
                n
                for n in self._nodes.values()
                if n.status == "alive" and all(n.tags.get(k) == v for k, v in wanted.items())
            ]
        limit = 1 if not job_tags else (len(eligible) if count is None else count)
        if len(eligible) <= limit:
            return eligible
        avoided = set(avoid)
        preferred = [n for n in eligible if n.name not in avoided]
        if len(preferred) >= limit:
            return self._least_recently_chosen(preferred, limit)
        rest = [n for n in eligible if n.name in avoided]
        # All the preferred are taken; they count as chosen too, so the rotation stays even.
        return self._least_recently_chosen(preferred, len(preferred)) + self._least_recently_chosen(
            rest, limit - len(preferred)
        )

    def _least_recently_chosen(self, nodes: list[Node], count: int) -> list[Node]:
        with self._lock:
            last = self._last_chosen
            fresh = [n for n in nodes if n.name not in last]  # never chosen: first, in random order
            if len(fresh) >= count:
                chosen = self._rng.sample(fresh, count)
            else:
                known = [n for n in nodes if n.name in last]
                chosen = fresh + heapq.nsmallest(count - len(fresh), known, key=lambda n: last[n.name])
            for node in chosen:
                last[node.name] = next(self._choices)
        return chosen
