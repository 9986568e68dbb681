"""The public API: what `import message_bus` gives, and what it does not drag in."""

from __future__ import annotations

import subprocess
import sys

import message_bus


def test_importing_the_package_imports_no_nats_client_and_no_telemetry_sdk() -> None:
    code = (
        "import sys, message_bus;"
        "loaded = [m for m in ('nats', 'opentelemetry', 'prometheus_client',"
        " 'dependency_injector') if m in sys.modules];"
        "print(','.join(loaded))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == ""


def test_the_crates_names_are_exported() -> None:
    for name in (
        "Message",
        "MessageType",
        "PartitionKey",
        "Corridor",
        "Bank",
        "CorridorBank",
        "Broadcast",
        "Publisher",
        "Subscriber",
        "MessageHandler",
        "PublisherConfig",
        "SubscriberConfig",
        "PublishReceipt",
        "MessageBusError",
        "ValidationError",
        "PublishTimeout",
    ):
        assert name in message_bus.__all__
        assert hasattr(message_bus, name)
    assert issubclass(message_bus.PublishTimeout, TimeoutError)
    assert issubclass(message_bus.ValidationError, ValueError)
    assert len(message_bus.MessageType) == 11


def test_the_contract_suite_is_importable_without_pytest_loaded() -> None:
    code = "import sys, message_bus.testing; print('pytest' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "False"


def test_loading_the_settings_imports_no_nats_client() -> None:
    code = (
        "import sys; from message_bus.app.config import load_settings;"
        "load_settings(environ={'DELTRAN_BACKEND': 'memory'});"
        "print('nats' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert result.stdout.strip() == "False"
