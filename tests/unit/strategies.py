"""Hypothesis strategies shared by the domain's property tests: valid tokens and messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
from hypothesis import strategies as st

from message_bus import Message, MessageType, PartitionKey

corridors = st.from_regex(r"[A-Z]{3}-[A-Z]{3}", fullmatch=True)
bics = st.from_regex(r"[A-Z]{4}[A-Z]{2}[A-Z0-9]{2}([A-Z0-9]{3})?", fullmatch=True)
routed_keys = st.one_of(
    corridors.map(PartitionKey.corridor),
    bics.map(PartitionKey.bank),
    st.builds(lambda c, b: PartitionKey.corridor_bank(corridor_id=c, bank_id=b), corridors, bics),
)
"""Keys with a partition number."""
keys = routed_keys | st.just(PartitionKey.broadcast())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)
header_names = st.from_regex(r"[A-Za-z][A-Za-z0-9-]{0,15}", fullmatch=True).filter(
    lambda n: not n.lower().startswith(("nats-", "deltran-")) and n.lower() != "content-type"
)
header_values = (
    st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\r\n\x00"), max_size=20)
    .map(str.strip)
    .filter(bool)
)
ids = st.from_regex(r"[!-~]{1,40}", fullmatch=True)
moments = st.datetimes(
    min_value=datetime(1, 1, 2),  # naive bounds, aware values
    max_value=datetime(9999, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=5, minutes=30))]),
)


@st.composite
def messages(draw: st.DrawFn, *, any_time: bool = False) -> Message:
    """Valid messages of every type and key; ``any_time`` also varies ``created_at``
    (any aware time, microseconds or not, as a caller building a Message directly may)."""
    message = Message.new(
        draw(st.sampled_from(list(MessageType))),
        draw(keys),
        draw(json_values),
        correlation_id=draw(st.none() | ids),
        causation_id=draw(st.none() | ids),
        headers=draw(st.dictionaries(header_names, header_values, max_size=3)),
    )
    if any_time:
        message = msgspec.structs.replace(message, created_at=draw(moments))
    return message
