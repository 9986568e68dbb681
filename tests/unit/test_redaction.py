"""Secrets never shown: URL userinfo, passwords, tokens and seeds in messages, reprs, logs."""

from __future__ import annotations

import logging
import sys

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from message_bus import ValidationError
from message_bus.adapters.nats import NatsConfig
from message_bus.app.cli.errors import CliError, error_line
from message_bus.app.cli.logs import RedactingFormatter
from message_bus.app.config import load_settings
from message_bus.domain.redaction import REDACTED, redact, redact_text, redact_url, redact_urls

_SAFE = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=126, exclude_characters="@:/,'\""),
    min_size=1,
    max_size=12,
)
_PRINTABLE = st.characters(exclude_categories=("Z", "C"))
"""Every printable character but blanks: what a URL's password can hold, unencoded."""
_SECRETS = st.text(alphabet=_PRINTABLE, min_size=4, max_size=24)
_HOSTS = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z]{2,5})?", fullmatch=True)
_SCHEMES = st.sampled_from(["nats", "tls", "ws", "wss"])


@given(_SCHEMES, _SAFE, _SECRETS, _HOSTS, st.integers(1, 65535))
def test_a_url_keeps_its_user_and_address_and_loses_its_password(
    scheme: str, user: str, password: str, host: str, port: int
) -> None:
    assume(password not in f"{scheme}://{user}:{REDACTED}@{host}:{port}")
    url = f"{scheme}://{user}:{password}@{host}:{port}"

    shown = redact_url(url)

    assert shown == f"{scheme}://{user}:{REDACTED}@{host}:{port}"
    assert redact_url(shown) == shown
    assert redact_text(f"cannot reach {url}: refused") == f"cannot reach {shown}: refused"


@given(_SCHEMES, _SECRETS, _HOSTS)
def test_a_user_without_password_is_a_token_and_goes_whole(
    scheme: str, token: str, host: str
) -> None:
    assume(":" not in token)
    assume(token not in f"{scheme}://{REDACTED}@{host}:4222")

    assert redact_url(f"{scheme}://{token}@{host}:4222") == f"{scheme}://{REDACTED}@{host}:4222"


@given(st.lists(st.tuples(_SAFE, _SECRETS, _HOSTS), min_size=1, max_size=4))
def test_every_url_of_a_list_in_a_sentence_is_redacted(
    servers: list[tuple[str, str, str]],
) -> None:
    urls = [f"nats://{user}:{password}@{host}:4222" for user, password, host in servers]
    for user, password, host in servers:
        assume(all(password not in f"nats://{u}:{REDACTED}@{h}:4222" for u, _, h in servers))
        del user, host

    texts = [redact_text(f"NATS unreachable at {', '.join(urls)} within 5s"), redact_urls(urls)]

    for _user, password, _host in servers:
        assert all(password not in text for text in texts)


@given(_SCHEMES, _SAFE, _SECRETS, _HOSTS)
def test_a_url_in_a_validation_error_or_a_repr_loses_its_password(
    scheme: str, user: str, password: str, host: str
) -> None:
    url = f"{scheme}://{user}:{password}@{host}:4222"
    assume(password not in f"{scheme}://{user}:{REDACTED}@{host}:4222")

    error = ValidationError("nats.urls", [url], "cannot be reached")

    assert password not in str(error)
    assert password not in repr(error.value)
    assert password not in redact_text(repr({"urls": [url, url]}))
    assert password not in redact_text(f"urls={url},{url}")


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("nats://alice:pa,ss@h", "nats://alice:***@h"),
        ("ws://alice:it's@h:4222 refused", "ws://alice:***@h:4222 refused"),
        ("['tls://alice:say\"hi\"@h']", "['tls://alice:***@h']"),
        ("nats://a:x@h1,nats://b:y@h2", "nats://a:***@h2"),  # no blank between: one URL
        ("see http://example.com/a, then b@c", "see http://example.com/a, then b@c"),
    ],
)
def test_a_password_with_quotes_or_commas_is_redacted_in_text(text: str, shown: str) -> None:
    assert redact_text(text) == shown


def test_a_text_of_many_schemes_is_redacted_in_linear_time() -> None:
    text = "a://" * 50_000 + " nats://alice:S3cret@h"

    assert redact_text(text).endswith(" nats://alice:***@h")


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("nats://host:4222", "nats://host:4222"),
        ("nats://alice:pa/ss@host:4222", "nats://alice:***@host:4222"),  # an unencoded '/'
        ("nats://alice:p@ss@host", "nats://alice:***@host"),  # the last '@' ends it
        ("alice:S3cret@host:4222", "alice:***@host:4222"),  # no scheme
        ("nats://:S3cret@host", "nats://***@host"),
        ("", ""),
    ],
)
def test_odd_urls_are_redacted_too(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_known_secrets_are_redacted_anywhere_in_a_text() -> None:
    text = "auth failed for token T0k3nValue and seed SUABC123 (T0k3nValue)"

    assert redact_text(text, ["T0k3nValue", None, "", "SUABC123"]) == (
        "auth failed for token *** and seed *** (***)"
    )


def test_redact_walks_containers() -> None:
    value = {"urls": ["nats://a:S3cret@h", ("tls://T0k@h",)], "n": 1}

    assert redact(value) == {"urls": ["nats://a:***@h", ("tls://***@h",)], "n": 1}


def test_a_validation_error_never_carries_a_secret_value() -> None:
    secret = ValidationError("password", "S3cret", "must be long", secret=True)
    url = ValidationError("urls", "nats://alice:S3cret@host:0", "port must be in 1..65535")
    many = ValidationError("--url", ["nats://alice:S3cret@h", 5], "must be a list of strings")

    for error in (secret, url, many):
        assert "S3cret" not in str(error)
        assert "S3cret" not in repr(error.value)
    assert secret.value == REDACTED
    assert url.value == "nats://alice:***@host:0"


@given(st.sampled_from(["password", "token", "nkey_seed"]), _SECRETS.map(lambda s: f"S3c{s}"))
def test_a_bad_secret_field_is_named_without_its_value(name: str, secret: str) -> None:
    options: dict[str, object] = {name: [secret]}
    if name == "password":
        options["user"] = "alice"

    with pytest.raises(ValidationError) as caught:
        NatsConfig(**options)  # type: ignore[arg-type]

    assert caught.value.field == name
    assert caught.value.value == REDACTED
    assert secret not in str(caught.value)


_WORDS = st.from_regex(r"[A-Za-z0-9_.~!$&*+;=-]{1,16}", fullmatch=True)


_USERINFO_ENDS = frozenset("#/?@")  # a password holding one of these ends the authority early


@given(
    _WORDS,
    _SECRETS.filter(lambda word: not _USERINFO_ENDS & set(word)).map(lambda word: f"S3c{word}"),
)
def test_a_bad_url_is_named_without_its_password(user: str, password: str) -> None:
    assume(password not in f"nats://{user}:{REDACTED}@host:99999")
    for url in (f"nats://{user}:{password}@host:99999", f"http://{user}:{password}@host"):
        with pytest.raises(ValidationError) as caught:
            NatsConfig(urls=[url])

        assert password not in str(caught.value)
        assert password not in repr(caught.value.value)


def test_the_repr_of_a_config_shows_no_secret() -> None:
    config = NatsConfig(
        urls=["nats://alice:S3cret@a:4222", "nats://T0ken@b:4222"],
        token="T0kenField",
    )

    shown = repr(config)

    for secret in ("S3cret", "T0ken@", "T0kenField"):
        assert secret not in shown
    assert "nats://alice:***@a:4222" in shown
    assert "token='***'" in shown
    assert set(config.secrets()) == {"S3cret", "T0ken", "T0kenField"}


def test_settings_from_the_environment_show_no_secret() -> None:
    settings = load_settings(
        environ={"DELTRAN_NATS_URLS": "nats://alice:S3cret@h:4222", "DELTRAN_NATS_TOKEN": "T0k"}
    )

    assert "S3cret" not in repr(settings)
    assert settings.redacted()["nats"]["urls"] == ["nats://alice:***@h:4222"]
    assert settings.nats.urls == ("nats://alice:S3cret@h:4222",)  # what nats-py is given


@pytest.mark.parametrize(
    ("urls", "required"),
    [
        (["nats://a:4222"], False),
        (["tls://a:4222"], True),
        (["wss://a:443"], True),
        (["nats://a:4222", "tls://b:4222"], True),
    ],
)
def test_a_tls_url_makes_tls_required(urls: list[str], required: bool) -> None:
    assert NatsConfig(urls=urls).requires_tls is required
    assert NatsConfig(urls=urls, tls_ca="/etc/ca.pem").requires_tls


@pytest.mark.parametrize(
    ("options", "reason"),
    [
        ({"urls": ["ws://a:80"], "tls_ca": "/etc/ca.pem"}, "cannot carry TLS"),
        ({"urls": ["ws://a:80", "wss://b:443"]}, "cannot carry TLS"),
        ({"urls": ["nats://a:4222", "ws://b:80"]}, "cannot be mixed with websocket"),
    ],
)
def test_urls_that_cannot_honour_the_tls_choice_are_refused(
    options: dict[str, object], reason: str
) -> None:
    with pytest.raises(ValidationError, match=reason) as caught:
        NatsConfig(**options)  # type: ignore[arg-type]

    assert caught.value.field == "urls"


def test_the_cli_redacts_every_error_line() -> None:
    error = RuntimeError("cannot reach nats://alice:S3cret@h:4222\nsecond line")

    assert error_line(error) == "cannot reach nats://alice:***@h:4222"
    assert "S3cret" not in str(CliError("bad --url nats://alice:S3cret@h"))


def test_the_cli_log_format_redacts_arguments_and_tracebacks() -> None:
    formatter = RedactingFormatter("%(name)s: %(message)s")
    try:
        raise OSError("connect to nats://alice:S3cret@h:4222 failed")
    except OSError:
        record = logging.LogRecord(
            "nats.aio.client",
            logging.ERROR,
            __file__,
            1,
            "reconnect to %s",
            ("tls://T0k3n@h:4222",),
            sys.exc_info(),
        )

    shown = formatter.format(record)

    assert "S3cret" not in shown
    assert "T0k3n" not in shown
    assert "tls://***@h:4222" in shown


@pytest.mark.parametrize("value", [1, "yes", None])
def test_retry_initial_connect_must_be_a_bool(value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        NatsConfig(retry_initial_connect=value)  # type: ignore[arg-type]

    assert caught.value.field == "retry_initial_connect"
    assert caught.value.value == value
