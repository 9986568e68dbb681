"""Derived follow-up ids and merged port configs, for any input (hypothesis)."""

from __future__ import annotations

from uuid import UUID

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.app.overrides import merge_config
from message_bus.domain.errors import ValidationError
from message_bus.domain.ids import derived_message_id, new_message_id, uuid7_timestamp_ms
from message_bus.domain.message import check_id
from message_bus.ports import PublisherConfig, SubscriberConfig

parents = st.one_of(
    st.builds(lambda _: new_message_id(), st.integers()),
    st.text(alphabet=st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=128),
)


@given(parent=parents, index=st.integers(min_value=0, max_value=10_000))
def test_a_derived_id_is_a_deterministic_uuid7_the_codec_accepts(parent: str, index: int) -> None:
    derived = derived_message_id(parent, index)
    assert derived == derived_message_id(parent, index)
    uuid = UUID(derived)
    assert uuid.version == 7
    assert uuid.variant == "specified in RFC 4122"
    assert check_id("message_id", derived) == derived
    assert derived != derived_message_id(parent, index + 1)


@given(index=st.integers(min_value=0, max_value=100))
def test_a_derived_id_keeps_the_timestamp_of_a_uuid7_parent(index: int) -> None:
    parent = new_message_id()
    assert uuid7_timestamp_ms(derived_message_id(parent, index)) == uuid7_timestamp_ms(parent)


def test_a_negative_index_is_refused() -> None:
    with pytest.raises(ValueError, match="index"):
        derived_message_id(new_message_id(), -1)


@given(
    configured=st.builds(
        SubscriberConfig,
        ack_wait=st.floats(min_value=1, max_value=100),
        max_deliver=st.integers(min_value=1, max_value=20),
    ),
    max_concurrent=st.integers(min_value=1, max_value=100),
)
def test_an_override_changes_one_field_and_keeps_the_configured_rest(
    configured: SubscriberConfig, max_concurrent: int
) -> None:
    merged = merge_config(configured, max_concurrent=max_concurrent)
    assert merged.max_concurrent == max_concurrent
    assert (merged.ack_wait, merged.max_deliver) == (configured.ack_wait, configured.max_deliver)


@given(value=st.one_of(st.integers(max_value=0), st.just("ten")))
def test_a_bad_override_value_is_refused_naming_the_field(value: object) -> None:
    with pytest.raises(ValidationError) as error:
        merge_config(SubscriberConfig(), max_concurrent=value)
    assert error.value.field == "max_concurrent"


def test_a_config_of_another_type_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        merge_config(SubscriberConfig(), PublisherConfig())  # type: ignore[arg-type]
    assert error.value.field == "config"
