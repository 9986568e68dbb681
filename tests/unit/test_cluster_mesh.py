"""The cluster launcher returns only once its nodes form a full mesh.

A node turns healthy, and a meta leader is elected, before every route and every
client URL those routes carry have been exchanged; a client that connected then was
told of only part of the cluster. These tests drive the launcher's wait with nodes
whose monitoring answers change from poll to poll.
"""

from __future__ import annotations

from typing import Any, cast

import pytest

from message_bus.app import embedded
from message_bus.app.embedded import EmbeddedNatsServer, EmbeddedServerError, NatsCluster

NAMES = ("nats-1", "nats-2", "nats-3")
PORTS = (4301, 4302, 4303)


class ScriptedNode:
    """A running node whose ``/routez`` and ``/varz`` answer from a script: one step per
    poll of both (the last step repeats)."""

    def __init__(self, index: int, steps: list[tuple[set[str], set[int]]]) -> None:
        self.server_name = NAMES[index]
        self.port = PORTS[index]
        self.is_running = True
        self.steps = steps
        self.polls = 0

    def monitor(self, endpoint: str) -> tuple[int, dict[str, Any]]:
        routed, offered = self.steps[min(self.polls, len(self.steps) - 1)]
        if endpoint == "routez":
            # Route pooling: several routes to each peer.
            routes = [{"remote_name": name} for name in sorted(routed) for _ in range(4)]
            return 200, {"routes": routes}
        assert endpoint == "varz"
        self.polls += 1
        return 200, {"connect_urls": [f"127.0.0.1:{port}" for port in sorted(offered)]}


def complete(index: int) -> tuple[set[str], set[int]]:
    return set(NAMES) - {NAMES[index]}, set(PORTS)


def cluster_of(nodes: list[ScriptedNode]) -> NatsCluster:
    cluster = NatsCluster(size=len(nodes))
    cluster._nodes = cast(list[EmbeddedNatsServer], nodes)
    return cluster


@pytest.fixture(autouse=True)
def no_poll_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(embedded, "_POLL_INTERVAL", 0.0)


def test_waits_until_every_node_offers_every_client_url() -> None:
    # nats-1 has its routes but offers nats-3's client URL only on its third poll.
    late = ScriptedNode(0, [(complete(0)[0], {4301, 4302})] * 2 + [complete(0)])
    nodes = [late, ScriptedNode(1, [complete(1)]), ScriptedNode(2, [complete(2)])]

    cluster_of(nodes)._wait_meshed(deadline=float("inf"))

    assert late.polls == 3


def test_waits_until_every_node_routes_to_every_other() -> None:
    late = ScriptedNode(2, [({"nats-1"}, set(PORTS))] * 4 + [complete(2)])
    nodes = [ScriptedNode(0, [complete(0)]), ScriptedNode(1, [complete(1)]), late]

    cluster_of(nodes)._wait_meshed(deadline=float("inf"))

    assert late.polls == 5


def test_a_stopped_node_is_not_waited_for() -> None:
    nodes = [
        ScriptedNode(0, [({"nats-2"}, {4301, 4302})]),
        ScriptedNode(1, [({"nats-1"}, {4301, 4302})]),
        ScriptedNode(2, [(set(), set())]),
    ]
    nodes[2].is_running = False

    cluster_of(nodes)._wait_meshed(deadline=float("inf"))


def test_a_mesh_never_completed_names_what_is_missing() -> None:
    nodes = [
        ScriptedNode(0, [complete(0)]),
        ScriptedNode(1, [({"nats-1"}, {4301, 4302})]),
        ScriptedNode(2, [complete(2)]),
    ]

    with pytest.raises(EmbeddedServerError) as caught:
        cluster_of(nodes)._wait_meshed(deadline=0.0)

    message = str(caught.value)
    assert "routes not complete" in message
    assert "nats-2 has no route to nats-3" in message
    assert "does not offer the client URL of nats-3" in message


@pytest.mark.parametrize("size", [-1, 0, 1])
def test_a_cluster_of_fewer_than_two_nodes_is_refused_before_any_start(size: int) -> None:
    # A lone node routed to itself stays "still recovering meta layer" for ever.
    with pytest.raises(ValueError, match=rf"size={size}: a cluster needs at least two nodes"):
        NatsCluster(size=size)
