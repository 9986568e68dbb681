"""Which placement refusals are asked again: only a peer not yet reported, never a setting."""

from __future__ import annotations

import math

import nats.js.errors
import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.adapters.nats import NatsClient, StreamManager
from message_bus.adapters.nats.placement import PLACEMENT_WAIT, placement_pending
from message_bus.domain.errors import ValidationError

PENDING = ["peer offline"]
FINAL = [
    "miscellaneous issue",
    "exclude tag set",
    "insufficient storage",
    "server tag not unique",
    "jetstream not enabled in cluster",
    "tags not matched ['az:1', 'az:2']",
    "tags excluded ['slow']",
]


def _refusal(description: str, err_code: int = 10005) -> nats.js.errors.APIError:
    return nats.js.errors.BadRequestError(code=400, err_code=err_code, description=description)


@given(reasons=st.lists(st.sampled_from(PENDING + FINAL), min_size=1, max_size=4, unique=True))
def test_a_placement_is_pending_only_when_every_reason_is_an_unreported_peer(
    reasons: list[str],
) -> None:
    error = _refusal(", ".join(["no suitable peers for placement", *reasons]))
    assert placement_pending(error) == all(reason in PENDING for reason in reasons)


@pytest.mark.parametrize(
    "error",
    [
        _refusal("no suitable peers for placement"),  # no reason given
        _refusal("no suitable peers for placement, peer offline", err_code=10074),
        _refusal("insufficient resources, peer offline", err_code=10005),
        nats.js.errors.ServiceUnavailableError(code=503, description="peer offline"),
        ValueError("no suitable peers for placement, peer offline"),
    ],
)
def test_other_errors_are_not_a_pending_placement(error: BaseException) -> None:
    assert not placement_pending(error)


@pytest.mark.parametrize("wait", [-1, math.nan, math.inf, True, "10"])
def test_a_bad_placement_wait_is_refused_naming_it(wait: object) -> None:
    with pytest.raises(ValidationError) as caught:
        StreamManager(NatsClient(), placement_wait=wait)  # type: ignore[arg-type]
    assert caught.value.field == "placement_wait"


def test_the_default_placement_wait_outlasts_a_peers_longest_report_interval() -> None:
    assert StreamManager(NatsClient()).placement_wait == PLACEMENT_WAIT >= 10.0
    assert StreamManager(NatsClient(), placement_wait=0).placement_wait == 0.0
