"""The documented wire vectors (docs/wire-vectors.json) and the messages they describe."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path
from typing import Any

from message_bus import Message, MessageType, PartitionKey

VECTORS: list[dict[str, Any]] = json.loads(
    (Path(__file__).parents[2] / "docs" / "wire-vectors.json").read_text()
)


def message_of(vector: dict[str, Any]) -> Message:
    """The message a vector describes, with its fixed id and creation time."""
    fields = vector["message"]
    return Message.new(
        MessageType(fields["message_type"]),
        PartitionKey.parse(fields["partition_key"]),
        fields["payload"],
        message_id=fields["id"],
        created_at=datetime.fromisoformat(fields["created_at"]),
        correlation_id=fields.get("correlation_id"),
        causation_id=fields.get("causation_id"),
        headers=fields.get("headers"),
    )
