"""Publisher and subscriber configuration: the crate's defaults, validated fields."""

from __future__ import annotations

import pytest

from message_bus import PartitionKey, PublisherConfig, SubscriberConfig, ValidationError


def test_publisher_defaults_are_the_original_crates() -> None:
    config = PublisherConfig()
    assert config.use_jetstream is True
    assert config.publish_timeout == 5.0
    assert config.max_retry_attempts == 3
    assert config.initial_retry_delay == 0.1
    assert config.max_retry_delay == 2.0
    assert config.partitions == 32


def test_subscriber_defaults_are_the_original_crates() -> None:
    config = SubscriberConfig()
    assert config.consumer_group == "deltran-workers"
    assert config.durable_name == "deltran-consumer"
    assert config.max_concurrent == 10
    assert config.ack_wait == 30.0
    assert config.max_deliver == 3
    assert config.use_jetstream is True


def test_retry_backoff_doubles_up_to_the_cap() -> None:
    config = PublisherConfig()
    assert [config.retry_delay(n) for n in range(1, 7)] == [0.1, 0.2, 0.4, 0.8, 1.6, 2.0]


def test_nak_delay_grows_with_the_delivery_count() -> None:
    config = SubscriberConfig(nak_initial_delay=0.5, nak_max_delay=3.0)
    assert [config.nak_delay(n) for n in range(1, 6)] == [0.5, 1.0, 2.0, 3.0, 3.0]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"publish_timeout": 0}, "publish_timeout"),
        ({"publish_timeout": -1.0}, "publish_timeout"),
        ({"publish_timeout": float("nan")}, "publish_timeout"),
        ({"max_retry_delay": float("inf")}, "max_retry_delay"),
        ({"max_retry_attempts": 0}, "max_retry_attempts"),
        ({"max_retry_attempts": True}, "max_retry_attempts"),
        ({"partitions": 0}, "partitions"),
        ({"partitions": 5000}, "partitions"),
        ({"max_in_flight": 0}, "max_in_flight"),
        ({"circuit_breaker_threshold": -1}, "circuit_breaker_threshold"),
    ],
)
def test_bad_publisher_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        PublisherConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"consumer_group": ""}, "consumer_group"),
        ({"consumer_group": "workers.a"}, "consumer_group"),
        ({"consumer_group": "workers*"}, "consumer_group"),
        ({"durable_name": "a>b"}, "durable_name"),
        ({"durable_name": "x\r\n"}, "durable_name"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"ack_wait": 0}, "ack_wait"),
        ({"ack_wait": float("inf")}, "ack_wait"),
        ({"max_deliver": 0}, "max_deliver"),
        ({"partition_key": "corridor.USD-EUR"}, "partition_key"),
    ],
)
def test_bad_subscriber_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        SubscriberConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_consumer_names_keep_groups_and_filters_apart() -> None:
    a = SubscriberConfig(consumer_group="netting")
    b = SubscriberConfig(consumer_group="audit")
    c = SubscriberConfig(consumer_group="netting", partition_key=PartitionKey.corridor("USD-EUR"))
    names = {a.consumer_name, b.consumer_name, c.consumer_name}
    assert len(names) == 3
    for name in names:
        assert not set(name) & {".", "*", ">", " "}
