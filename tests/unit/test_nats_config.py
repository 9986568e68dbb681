"""NATS connection settings: the crate's defaults, validation, and reconnect backoff."""

from __future__ import annotations

import pytest

from message_bus import ValidationError
from message_bus.adapters.nats import NatsConfig, reconnect_backoff


def test_defaults_are_the_original_crates() -> None:
    config = NatsConfig()

    assert config.urls == ("nats://localhost:4222",)
    assert config.name == "deltran"
    assert config.max_reconnect_attempts is None
    assert config.reconnect_delay == 2.0
    assert config.connection_timeout == 5.0
    assert config.enable_jetstream is True


def test_a_single_url_string_becomes_a_one_server_list() -> None:
    assert NatsConfig(urls="nats://10.0.0.1:4222").urls == ("nats://10.0.0.1:4222",)


def test_a_cluster_lists_every_server() -> None:
    urls = ["nats://a:4222", "tls://b:4222", "nats://c:4222"]

    assert NatsConfig(urls=urls).urls == tuple(urls)


@pytest.mark.parametrize(
    "url", ["localhost:4222", "http://localhost:4222", "nats:/host:4222", "nats//host:4222"]
)
def test_a_url_must_name_its_scheme(url: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NatsConfig(urls=[url])

    assert caught.value.field == "urls"
    assert caught.value.value == url
    assert "nats://host:4222" in caught.value.reason


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"urls": []}, "urls"),
        ({"urls": ["http://localhost:4222"]}, "urls"),
        ({"urls": ["nats://:4222"]}, "urls"),
        ({"urls": ["nats://host:99999"]}, "urls"),
        ({"urls": ["nats://host name:4222"]}, "urls"),
        ({"name": ""}, "name"),
        ({"name": "  "}, "name"),
        ({"max_reconnect_attempts": -1}, "max_reconnect_attempts"),
        ({"reconnect_delay": 0}, "reconnect_delay"),
        ({"reconnect_delay": 5.0, "reconnect_max_delay": 1.0}, "reconnect_max_delay"),
        ({"connection_timeout": -1.0}, "connection_timeout"),
        ({"api_timeout": float("nan")}, "api_timeout"),
        ({"drain_timeout": float("inf")}, "drain_timeout"),
        ({"reconnect_buffer_size": -1}, "reconnect_buffer_size"),
        ({"user": "app"}, "user"),
        ({"password": "secret"}, "password"),
        ({"user": "app", "password": "secret", "token": "t0k3n"}, "token"),
        ({"token": "t0k3n", "creds_file": "/etc/app.creds"}, "creds_file"),
        ({"tls_cert": "/etc/client.pem"}, "tls_cert"),
        ({"tls_key": "/etc/client.key"}, "tls_key"),
        ({"tls_ca": ""}, "tls_ca"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ValidationError) as caught:
        NatsConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field


def test_a_half_credential_pair_names_the_half_that_is_set_and_hides_a_password() -> None:
    with pytest.raises(ValidationError, match="needs password") as caught:
        NatsConfig(user="app")
    assert (caught.value.field, caught.value.value) == ("user", "app")

    with pytest.raises(ValidationError, match="needs user") as caught:
        NatsConfig(password="hunter2")
    assert caught.value.field == "password"
    assert "hunter2" not in str(caught.value)


def test_secrets_stay_out_of_the_repr() -> None:
    text = repr(NatsConfig(user="app", password="hunter2"))
    token_text = repr(NatsConfig(token="s3cr3t-t0k3n"))

    assert "app" in text
    assert "hunter2" not in text
    assert "s3cr3t-t0k3n" not in token_text


def test_tls_is_on_when_any_tls_file_is_given() -> None:
    assert not NatsConfig().uses_tls
    assert NatsConfig(tls_ca="/etc/ca.pem").uses_tls


def test_reconnect_backoff_doubles_up_to_the_cap() -> None:
    ceilings = [reconnect_backoff(n, 0.5, 4.0, rng=lambda: 1.0) for n in range(6)]

    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]


def test_reconnect_backoff_jitters_within_the_upper_half_of_the_ceiling() -> None:
    assert reconnect_backoff(2, 0.5, 4.0, rng=lambda: 0.0) == 1.0
    assert reconnect_backoff(2, 0.5, 4.0, rng=lambda: 0.5) == 1.5
    assert reconnect_backoff(2, 0.5, 4.0, rng=lambda: 1.0) == 2.0


def test_reconnect_backoff_survives_a_very_long_outage() -> None:
    assert reconnect_backoff(10_000, 2.0, 30.0, rng=lambda: 1.0) == 30.0
