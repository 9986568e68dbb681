"""Settings: the original crate's defaults, TOML file < environment < flags, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from message_bus import PublisherConfig, SubscriberConfig, ValidationError
from message_bus.adapters.nats import NatsConfig
from message_bus.app.config import (
    BusSettings,
    load_settings,
    publisher_config_from,
    reference_markdown,
    settings_reference,
)
from message_bus.app.containers import build_container

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def test_defaults_are_the_original_crates() -> None:
    settings = load_settings(environ={})

    assert settings.backend == "nats"
    assert settings.partitions == 32
    assert settings.nats.urls == ("nats://localhost:4222",)
    assert settings.nats.name == "deltran"
    assert settings.nats.max_reconnect_attempts is None
    assert settings.nats.reconnect_delay == 2.0
    assert settings.nats.connection_timeout == 5.0
    assert settings.nats.enable_jetstream is True
    assert settings.publisher_config() == PublisherConfig()
    assert settings.subscriber_config() == SubscriberConfig()
    assert settings.streams.replicas == 1
    assert settings.streams.duplicate_window == 120.0
    assert settings.metrics.port == 9464


def test_environment_variables_override_the_defaults() -> None:
    settings = load_settings(
        environ={
            "DELTRAN_BACKEND": "memory",
            "DELTRAN_NATS_URLS": "nats://a:4222, nats://b:4222,,",
            "DELTRAN_PUBLISH_TIMEOUT": "2.5",
            "DELTRAN_MAX_DELIVER": "7",
            "DELTRAN_NATS_ENABLE_JETSTREAM": "off",
            "DELTRAN_NATS_MAX_RECONNECT_ATTEMPTS": "none",
            "DELTRAN_STREAM_REPLICAS": "3",
        }
    )

    assert settings.backend == "memory"
    assert settings.nats.urls == ("nats://a:4222", "nats://b:4222")
    assert settings.publisher_config().publish_timeout == 2.5
    assert settings.subscriber_config().max_deliver == 7
    assert settings.nats.enable_jetstream is False
    assert settings.nats.max_reconnect_attempts is None
    assert settings.streams.replicas == 3


def test_priority_is_file_then_environment_then_overrides(tmp_path: Path) -> None:
    config = tmp_path / "bus.toml"
    config.write_text(
        'backend = "memory"\npartitions = 64\n'
        "[publisher]\npublish_timeout = 9\nmax_retry_attempts = 4\n"
        '[nats]\nurls = ["nats://file:4222"]\n'
    )

    settings = load_settings(
        config,
        environ={"DELTRAN_PUBLISH_TIMEOUT": "3", "DELTRAN_BACKEND": "nats"},
        overrides={"backend": "embedded"},
    )

    assert settings.partitions == 64  # file only
    assert settings.publisher.max_retry_attempts == 4  # file only
    assert settings.publisher.publish_timeout == 3.0  # environment beats file
    assert settings.backend == "embedded"  # override beats environment
    assert settings.nats.urls == ("nats://file:4222",)


def test_a_commands_own_defaults_yield_to_every_explicit_source() -> None:
    demo_default = {"backend": "embedded"}

    assert load_settings(environ={}, defaults=demo_default).backend == "embedded"
    chosen = load_settings(environ={"DELTRAN_BACKEND": "nats"}, defaults=demo_default)
    assert chosen.backend == "nats"


def test_the_file_named_by_deltran_config_is_loaded(tmp_path: Path) -> None:
    config = tmp_path / "bus.toml"
    config.write_text("[streams]\nreplicas = 3\n")

    settings = load_settings(environ={"DELTRAN_CONFIG": str(config)})

    assert settings.streams.replicas == 3


@pytest.mark.parametrize(
    ("variable", "value", "reason"),
    [
        ("DELTRAN_PUBLISH_TIMEOUT", "soon", "must be a number"),
        ("DELTRAN_PUBLISH_TIMEOUT", "-1", "positive"),
        ("DELTRAN_BACKEND", "kafka", "one of memory, nats, embedded"),
        ("DELTRAN_NATS_URLS", "http://localhost:4222", "nats://host:4222"),
        ("DELTRAN_NATS_URLS", "localhost:4222", "nats://host:4222"),
        ("DELTRAN_NATS_URLS", "nats://a:4222,nats://b:0", "port must be in 1..65535"),
        ("DELTRAN_NATS_URLS", " , ", "at least one URL"),
        ("DELTRAN_NATS_NAME", "  ", "non-blank"),
        ("DELTRAN_NATS_CONNECTION_TIMEOUT", "0", "positive"),
        ("DELTRAN_PARTITIONS", "0", "1..4096"),
        ("DELTRAN_MAX_DELIVER", "three", "integer"),
        ("DELTRAN_MAX_DELIVER", "0", ">= 1"),
        ("DELTRAN_ACK_WAIT", "inf", "finite"),
        ("DELTRAN_CONSUMER_GROUP", "a.b", "[A-Za-z0-9_-]"),
        ("DELTRAN_NATS_ENABLE_JETSTREAM", "maybe", "boolean"),
        ("DELTRAN_METRICS_PORT", "70000", "0..65535"),
        ("DELTRAN_STREAM_REPLICAS", "7", "1..5"),
        ("DELTRAN_NATS_TLS_CA", "/no/such/ca.pem", "no such file"),
    ],
)
def test_a_bad_environment_value_names_the_variable_and_the_value(
    variable: str, value: str, reason: str
) -> None:
    with pytest.raises(ValidationError) as caught:
        load_settings(environ={variable: value})

    assert caught.value.field == variable
    assert value.strip() in str(caught.value) or str(caught.value.value) in str(caught.value)
    assert reason in caught.value.reason


def test_a_bad_file_value_names_the_key_and_the_file(tmp_path: Path) -> None:
    config = tmp_path / "bus.toml"
    config.write_text('[subscriber]\nack_wait = "30s"\n')

    with pytest.raises(ValidationError) as caught:
        load_settings(config, environ={})

    assert caught.value.field == f"subscriber.ack_wait in {config}"
    assert caught.value.value == "30s"


@pytest.mark.parametrize(
    ("toml", "key", "value", "reason"),
    [
        (
            '[nats]\nurls = ["nats://a:4222", "http://b:4222"]\n',
            "nats.urls",
            "http://b:4222",
            "nats://host:4222",
        ),
        ('[nats]\nurls = "b:4222"\n', "nats.urls", "b:4222", "nats://host:4222"),
        ("[nats]\nreconnect_delay = 0\n", "nats.reconnect_delay", 0.0, "positive"),
        ("[subscriber]\nmax_deliver = 0\n", "subscriber.max_deliver", 0, ">= 1"),
        ("[publisher]\nmax_in_flight = 0\n", "publisher.max_in_flight", 0, ">= 1"),
        ("partitions = 5000\n", "partitions", 5000, "1..4096"),
    ],
)
def test_a_value_the_config_rejects_names_its_key_and_file(
    tmp_path: Path, toml: str, key: str, value: object, reason: str
) -> None:
    config = tmp_path / "bus.toml"
    config.write_text(toml)

    with pytest.raises(ValidationError) as caught:
        load_settings(config, environ={})

    assert caught.value.field == f"{key} in {config}"
    assert caught.value.value == value
    assert reason in caught.value.reason


def test_a_rule_over_two_settings_says_how_to_set_the_other(tmp_path: Path) -> None:
    config = tmp_path / "bus.toml"
    config.write_text('[nats]\nuser = "bank"\n')
    with pytest.raises(ValidationError, match="DELTRAN_NATS_PASSWORD") as caught:
        load_settings(config, environ={})
    assert caught.value.field == f"nats.user in {config}"

    with pytest.raises(ValidationError, match="DELTRAN_NATS_RECONNECT_DELAY") as caught:
        load_settings(environ={"DELTRAN_NATS_RECONNECT_DELAY": "60"})
    assert caught.value.field.startswith("nats.reconnect_max_delay")  # the default, too small

    with pytest.raises(ValidationError) as caught:
        load_settings(
            environ={"DELTRAN_NATS_RECONNECT_DELAY": "60", "DELTRAN_NATS_RECONNECT_MAX_DELAY": "5"}
        )
    assert caught.value.field == "DELTRAN_NATS_RECONNECT_MAX_DELAY"


def test_a_secret_is_never_shown_even_when_mistyped(tmp_path: Path) -> None:
    config = tmp_path / "bus.toml"
    config.write_text("[nats]\ntoken = 123456789\n")
    with pytest.raises(ValidationError) as caught:
        load_settings(config, environ={})
    assert "123456789" not in str(caught.value)

    with pytest.raises(ValidationError) as caught:
        load_settings(environ={"DELTRAN_NATS_PASSWORD": "hunter2"})
    assert caught.value.field == "DELTRAN_NATS_PASSWORD"
    assert "hunter2" not in str(caught.value)


def test_the_sections_are_the_configs_the_bus_runs_with() -> None:
    settings = load_settings(
        environ={"DELTRAN_NATS_URLS": "tls://a:4222,tls://b:4222", "DELTRAN_NATS_NAME": "netting"}
    )

    assert settings.nats == NatsConfig(urls=["tls://a:4222", "tls://b:4222"], name="netting")
    assert BusSettings().nats == NatsConfig()
    assert BusSettings().subscriber == SubscriberConfig()


def test_the_container_builds_the_same_publisher_config_as_the_settings() -> None:
    settings = load_settings(environ={"DELTRAN_PARTITIONS": "64", "DELTRAN_PUBLISH_TIMEOUT": "2"})

    assert settings.partitions == 64
    assert settings.publisher_config().partitions == 64
    assert publisher_config_from(settings.to_dict()) == settings.publisher_config()
    assert build_container(settings).publisher_config() == settings.publisher_config()


def test_the_plain_settings_load_back_to_the_same_settings() -> None:
    settings = load_settings(
        environ={
            "DELTRAN_BACKEND": "memory",
            "DELTRAN_PARTITIONS": "8",
            "DELTRAN_NATS_URLS": "nats://a:4222,nats://b:4222",
            "DELTRAN_NATS_TOKEN": "t0ken",
            "DELTRAN_MAX_DELIVER": "5",
            "DELTRAN_METRICS_PORT": "0",
        }
    )
    plain = settings.to_dict()
    flat = {
        f"{table}.{name}" if isinstance(values, dict) else table: value
        for table, values in plain.items()
        for name, value in (values.items() if isinstance(values, dict) else [(table, values)])
    }

    assert sorted(flat) == sorted(s.key for s in settings_reference())
    assert load_settings(environ={}, overrides=flat) == settings


def test_a_changed_subscriber_config_is_checked_like_any_other() -> None:
    settings = load_settings(environ={})

    assert settings.subscriber_config(max_deliver=9).max_deliver == 9
    with pytest.raises(ValidationError) as caught:
        settings.subscriber_config(max_deliver=0)
    assert caught.value.field == "max_deliver"


def test_an_unknown_key_in_the_file_is_an_error_not_ignored(tmp_path: Path) -> None:
    config = tmp_path / "bus.toml"
    config.write_text("[publisher]\npublish_timout = 3\n")

    with pytest.raises(ValidationError, match=r"publisher\.publish_timout") as caught:
        load_settings(config, environ={})

    assert caught.value.reason == "unknown setting"


def test_a_missing_or_malformed_file_is_a_validation_error(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="no such file"):
        load_settings(tmp_path / "absent.toml", environ={})
    broken = tmp_path / "broken.toml"
    broken.write_text("backend = \n")
    with pytest.raises(ValidationError, match="not valid TOML"):
        load_settings(broken, environ={})


def test_credentials_must_come_in_pairs_and_one_method_at_a_time() -> None:
    with pytest.raises(ValidationError, match="DELTRAN_NATS_PASSWORD") as caught:
        load_settings(environ={"DELTRAN_NATS_USER": "bank"})
    assert caught.value.field == "DELTRAN_NATS_USER"

    with pytest.raises(ValidationError, match="one authentication method") as caught:
        load_settings(
            environ={
                "DELTRAN_NATS_USER": "bank",
                "DELTRAN_NATS_PASSWORD": "s3cret",
                "DELTRAN_NATS_TOKEN": "t0ken",
            }
        )
    assert "t0ken" not in str(caught.value)


def test_overrides_take_typed_values_and_name_the_flag_in_errors() -> None:
    settings = load_settings(environ={}, overrides={"--url=nats.urls": ["nats://a:4222"]})
    assert settings.nats.urls == ("nats://a:4222",)

    with pytest.raises(ValidationError) as caught:
        load_settings(environ={}, overrides={"--url=nats.urls": ["localhost:4222"]})

    assert caught.value.field == "--url"
    assert caught.value.value == "localhost:4222"


def test_redacted_settings_hide_secrets() -> None:
    settings = load_settings(
        environ={"DELTRAN_NATS_USER": "bank", "DELTRAN_NATS_PASSWORD": "s3cret"}
    )

    assert settings.redacted()["nats"]["password"] == "***"
    assert settings.redacted()["nats"]["user"] == "bank"
    assert "s3cret" not in repr(settings.redacted())


def test_every_setting_has_a_unique_environment_variable_and_documentation() -> None:
    rows = settings_reference()

    assert len({r.env for r in rows}) == len(rows)
    assert all(r.env.startswith("DELTRAN_") and r.doc for r in rows)
    assert {r.key for r in rows} >= {"backend", "partitions", "nats.urls", "metrics.port"}
    assert BusSettings().to_dict()["nats"]["urls"] == ["nats://localhost:4222"]


def test_the_configuration_document_holds_the_generated_reference() -> None:
    assert reference_markdown() in DOCS.read_text(encoding="utf-8"), (
        "docs/configuration.md is stale: paste message_bus.app.config.reference_markdown()"
    )


def test_the_trace_sample_ratio_is_a_share() -> None:
    assert (
        load_settings(environ={"DELTRAN_TRACING_SAMPLE_RATIO": "0.1"}).tracing.sample_ratio == 0.1
    )
    for bad in ("1.5", "-0.1", "half"):
        with pytest.raises(ValidationError) as caught:
            load_settings(environ={"DELTRAN_TRACING_SAMPLE_RATIO": bad})
        assert caught.value.field == "DELTRAN_TRACING_SAMPLE_RATIO"
