"""Three members of an ordered group in processes of their own; one is SIGKILLed mid-stream.

Nothing is lost, first deliveries keep each key's publish order, no key is ever handled
by two members at once, and the dead member's partitions move within the failover time,
which the test prints.
"""

from __future__ import annotations

import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from waits import eventually

from message_bus import Message, MessageType, PartitionKey
from message_bus.adapters.nats import JetStreamPublisher, NatsClient, NatsConfig, StreamManager
from message_bus.app.embedded import EmbeddedNatsServer
from message_bus.testing.samples import sample_payload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

PARTITIONS = 32
FAILOVER = 2.0
MESSAGES = 1500
KEYS = 24


@dataclass
class Member:
    name: str
    log: Path
    process: subprocess.Popen[bytes]
    killed_at: int | None = None

    def events(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        lines = self.log.read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def owned(self) -> list[int] | None:
        owned = [e["partitions"] for e in self.events() if e["ev"] == "owned"]
        return owned[-1] if owned else None


@dataclass
class Members:
    members: list[Member] = field(default_factory=list)

    def events(self) -> list[dict[str, Any]]:
        return sorted((e for m in self.members for e in m.events()), key=lambda e: e["t"])

    def ended(self) -> set[str]:
        return {e["id"] for e in self.events() if e["ev"] == "end"}


@pytest.fixture
def members(tmp_path: Path) -> Iterator[Members]:
    group = Members()
    yield group
    for member in group.members:
        if member.process.poll() is None:
            member.process.send_signal(signal.SIGTERM)
    for member in group.members:
        try:
            member.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            member.process.kill()
            member.process.wait(timeout=10)


def start_member(url: str, group: str, name: str, tmp_path: Path) -> Member:
    log = tmp_path / f"{name}.jsonl"
    command = [
        sys.executable,
        "-m",
        "message_bus.testing.ordered_member",
        *("--url", url, "--group", group, "--name", name, "--log", str(log)),
        *("--failover", str(FAILOVER), "--work-ms", "2", "--max-concurrent", "8", "--debug"),
    ]
    with (tmp_path / f"{name}.err").open("wb") as errors:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors)
    return Member(name, log, process)


def keys() -> list[PartitionKey]:
    """Keys of this run: banks ``?Q{run}GB2L``."""
    letters = "ABCDEFGHJKLMNPQRSTUVWXYZ"
    run = secrets.choice(letters) + secrets.choice(letters)
    return [
        PartitionKey.corridor_bank(corridor_id="USD-EUR", bank_id=f"{letters[i]}Q{run}GB2L")
        for i in range(KEYS)
    ]


def inversions(events: list[dict[str, Any]]) -> int:
    """Per key, first deliveries whose ``n`` is lower than an earlier first delivery's."""
    first: dict[str, list[int]] = defaultdict(list)
    seen: set[str] = set()
    for event in events:
        if event["ev"] == "start" and event["id"] not in seen:
            seen.add(event["id"])
            first[event["key"]].append(event["n"])
    return sum(
        1
        for order in first.values()
        for before, after in itertools.pairwise(order)
        if after < before
    )


def overlaps(events: list[dict[str, Any]], killed: dict[str, int]) -> list[str]:
    """Handler runs of one key that overlapped in time (a killed member's last run ends
    when it was killed)."""
    runs: dict[str, list[tuple[int, int, str]]] = defaultdict(list)
    open_runs: dict[tuple[str, str], int] = {}
    for event in events:
        if event["ev"] not in ("start", "end"):
            continue
        slot = (event["member"], event["id"])
        if event["ev"] == "start":
            open_runs[slot] = event["t"]
        elif event["ev"] == "end":
            runs[event["key"]].append((open_runs.pop(slot), event["t"], event["member"]))
    for (member, message_id), started in open_runs.items():
        key = next(e["key"] for e in events if e.get("id") == message_id)
        runs[key].append((started, killed.get(member, started), member))
    found = []
    for key, spans in runs.items():
        spans.sort()
        for (_, e1, m1), (s2, _, m2) in itertools.pairwise(spans):
            if s2 < e1:
                found.append(f"{key}: {m1} and {m2}")
    return found


async def test_three_members_with_one_killed_mid_stream_lose_nothing_and_keep_key_order(
    nats_server: EmbeddedNatsServer, members: Members, tmp_path: Path
) -> None:
    url = nats_server.url
    client = NatsClient(NatsConfig(urls=[url], reconnect_delay=0.05))
    await client.connect()
    await StreamManager(client).apply()
    group = f"kill-{secrets.token_hex(4)}"
    for i in range(3):
        members.members.append(start_member(url, group, f"m{i}", tmp_path))

    def balanced() -> bool:
        owned = [m.owned() for m in members.members]
        if any(o is None for o in owned):
            return False
        counts = sorted(len(o or []) for o in owned)
        union = {p for o in owned for p in o or []}
        return counts == [10, 11, 11] and len(union) == PARTITIONS

    await eventually(balanced, "three members owning 10, 11 and 11 partitions", timeout=60)

    all_keys = keys()
    sent = [  # "n", a field PaymentInstruction does not declare, is the member log's order
        Message.new(
            MessageType.PAYMENT_INSTRUCTION,
            all_keys[i % KEYS],
            sample_payload(MessageType.PAYMENT_INSTRUCTION, payment_id=f"pay-{i}", n=i),
        )
        for i in range(MESSAGES)
    ]
    publisher = JetStreamPublisher(client)
    await publisher.publish_many(sent[: MESSAGES // 3])
    await eventually(
        lambda: len(members.ended()) >= MESSAGES // 5, "a fifth of the messages handled", timeout=60
    )
    victim = members.members[0]
    victim_partitions = set(victim.owned() or [])
    killed_at = time.monotonic_ns()
    os.kill(victim.process.pid, signal.SIGKILL)
    victim.process.wait(timeout=10)
    victim.killed_at = killed_at
    await publisher.publish_many(sent[MESSAGES // 3 :])

    survivors = members.members[1:]

    def moved() -> bool:
        owned = {p for m in survivors for p in m.owned() or []}
        return victim_partitions <= owned

    await eventually(moved, "the dead member's partitions owned by the survivors", timeout=60)
    owned_events = [
        e for m in survivors for e in m.events() if e["ev"] == "owned" and e["t"] > killed_at
    ]
    covered: set[int] = set()
    failover_ns = None
    latest: dict[str, set[int]] = {m.name: set(m.owned() or []) for m in survivors}
    for event in sorted(owned_events, key=lambda e: e["t"]):
        latest[event["member"]] = set(event["partitions"])
        covered = set().union(*latest.values())
        if victim_partitions <= covered:
            failover_ns = event["t"] - killed_at
            break
    expected = {m.id for m in sent}
    await eventually(
        lambda: expected <= members.ended(), f"all {MESSAGES} messages handled", timeout=90
    )
    events = members.events()
    lost = expected - members.ended()
    inverted = inversions(events)
    overlapping = overlaps(events, {victim.name: killed_at})
    failover = (failover_ns or 0) / 1e9
    print(
        f"\nordered group, 3 members, 1 SIGKILLed: {MESSAGES} messages, {len(lost)} lost, "
        f"{inverted} order inversions among first deliveries, {len(overlapping)} overlaps, "
        f"failover {failover:.2f} s (failover_timeout {FAILOVER:g} s)"
    )
    assert not lost
    assert inverted == 0
    assert not overlapping, overlapping[:5]
    assert failover_ns is not None
    assert failover <= 3 * FAILOVER, f"failover took {failover:.2f} s"
    in_flight = [
        e
        for e in victim.events()
        if e["ev"] == "start"
        and e["id"] not in {x["id"] for x in victim.events() if x["ev"] == "end"}
    ]
    for start in in_flight:  # handled again, by a survivor, before anything later of its key
        after_kill = [
            e
            for e in events
            if e["ev"] == "start" and e["key"] == start["key"] and e["t"] > killed_at
        ]
        again = [i for i, e in enumerate(after_kill) if e["id"] == start["id"]]
        assert again, "the in-flight message was never handled again"
        before = after_kill[: again[0]]  # messages it finished whose commit had not landed
        assert all(e["n"] < start["n"] for e in before), "a later message ran before it"
    await publisher.close()
    await client.close()
