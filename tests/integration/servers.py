"""Clients and server configs that several integration tests share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from message_bus.adapters.nats import NatsClient, NatsConfig


async def connect(url: str, **options: Any) -> NatsClient:
    """A connected client that reconnects quickly (tests restart and cut servers)."""
    client = NatsClient(
        NatsConfig(urls=[url], reconnect_delay=0.05, reconnect_max_delay=0.2, **options)
    )
    await client.connect()
    return client


def acks_denied_config(tmp_path: Path, user: str = "worker") -> Path:
    """A server config with users ``admin`` and ``user`` (password ``secret``), where
    ``user`` may publish anything but acknowledgements (``$JS.ACK.>``)."""
    config = tmp_path / "no-acks.conf"
    config.write_text(
        "jetstream { sync_interval: always }\n"
        "authorization {\n"
        "  users = [\n"
        "    { user: admin, password: secret }\n"
        f'    {{ user: {user}, password: secret, permissions: {{ publish: {{ allow: [">"],'
        ' deny: ["$JS.ACK.>"] } } }\n'
        "  ]\n"
        "}\n"
    )
    return config


__all__ = ["acks_denied_config", "connect"]
