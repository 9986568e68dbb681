"""The doctor's checks on deployments described by hand: what passes, warns and fails,
and the inputs it refuses (hypothesis for the version parser and the monitoring URL)."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus import ValidationError
from message_bus.adapters.nats.deployment import (
    ConsumerLoad,
    Deployment,
    StreamState,
    check_monitor_url,
)
from message_bus.app.cli.doctor import doctor_json, doctor_text
from message_bus.app.doctor import Check, DesiredStreams, desired_streams, evaluate, parse_version
from message_bus.domain.catalog import StreamCatalog
from message_bus.ports.config import PublisherConfig

GIB = 1 << 30


def wanted(replicas: int = 3, window: float = 120.0) -> DesiredStreams:
    return desired_streams(StreamCatalog.default(), replicas, window, PublisherConfig())


def healthy(desired: DesiredStreams, **changes: object) -> Deployment:
    """A deployment exactly as the checklist wants it: every check passes."""
    streams = tuple(
        StreamState(name, config, 0, 0) for name, config in sorted(desired.configs.items())
    )
    deployment = Deployment(
        version="2.15.1",
        server_name="nats-1",
        tls=True,
        auth_required=True,
        cluster_size=3,
        cluster_source="/jsz meta_cluster",
        sync_always=True,
        sync_interval=120.0,
        storage_used=0,
        storage_max=10 * GIB,
        streams=streams,
        consumers=(),
    )
    return dataclasses.replace(deployment, **changes)  # type: ignore[arg-type]


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {check.name: check for check in checks}


def with_stream(deployment: Deployment, name: str, **config: object) -> Deployment:
    streams = tuple(
        dataclasses.replace(s, config=s.config.evolve(**config)) if s.name == name else s
        for s in deployment.streams
    )
    return dataclasses.replace(deployment, streams=streams)


def test_a_deployment_as_the_checklist_wants_passes_every_check() -> None:
    desired = wanted()

    checks = evaluate(healthy(desired), desired)

    assert [c.status for c in checks] == ["pass"] * 10
    assert all(not c.fix for c in checks)


def test_a_server_older_than_2_11_warns_saying_what_needs_it() -> None:
    desired = wanted()

    check = by_name(evaluate(healthy(desired, version="2.10.22"), desired))["server version"]

    assert check.status == "warn"
    assert "per-message TTL and priority groups" in check.found
    assert "2.11" in check.fix


def test_more_replicas_than_servers_fails_naming_the_streams() -> None:
    desired = wanted()

    check = by_name(evaluate(healthy(desired, cluster_size=1), desired))["cluster size"]

    assert check.status == "fail"
    assert "DEAD_LETTERS R3" in check.found


def test_single_replica_streams_on_a_cluster_warn() -> None:
    desired = wanted(replicas=1)
    deployment = healthy(desired)

    checks = by_name(evaluate(deployment, desired))

    assert checks["cluster size"].status == "warn"
    assert "fewer than 3 replicas" in checks["cluster size"].found
    assert "DELTRAN_STREAM_REPLICAS=3" in checks["cluster size"].fix


def test_a_sync_interval_other_than_always_warns_with_its_value() -> None:
    desired = wanted()
    deployment = healthy(desired, sync_always=False, sync_interval=120.0)

    check = by_name(evaluate(deployment, desired))["sync interval"]

    assert check.status == "warn"
    assert "sync_interval 120s" in check.found
    assert "sync_interval: always" in check.fix


def test_drift_and_a_missing_stream_fail_naming_field_and_stream() -> None:
    desired = wanted()
    deployment = with_stream(healthy(desired), "CHECKPOINTS", max_age=60.0)
    deployment = dataclasses.replace(
        deployment, streams=tuple(s for s in deployment.streams if s.name != "SETTLEMENT_PROOFS")
    )

    check = by_name(evaluate(deployment, desired))["stream config"]

    assert check.status == "fail"
    assert "missing: SETTLEMENT_PROOFS" in check.found
    assert "CHECKPOINTS (max_age: 60.0 ->" in check.found


def test_a_duplicate_window_shorter_than_the_retry_budget_fails() -> None:
    desired = wanted()
    deployment = with_stream(healthy(desired), "CHECKPOINTS", duplicate_window=1.0)

    check = by_name(evaluate(deployment, desired))["duplicate window"]

    assert check.status == "fail"
    assert "CHECKPOINTS 1s" in check.found


def test_a_consumer_at_its_ack_limit_warns_and_one_below_passes() -> None:
    desired = wanted()
    full = ConsumerLoad("CHECKPOINTS", "settle", 1000, 1000)
    below = ConsumerLoad("CHECKPOINTS", "other", 999, 1000)

    at_limit = by_name(evaluate(healthy(desired, consumers=(full, below)), desired))
    fine = by_name(evaluate(healthy(desired, consumers=(below,)), desired))

    assert at_limit["ack pending"].status == "warn"
    assert "CHECKPOINTS/settle 1000/1000" in at_limit["ack pending"].found
    assert "other" not in at_limit["ack pending"].found
    assert fine["ack pending"].status == "pass"


def test_storage_nearly_full_or_smaller_than_the_streams_limits_warns() -> None:
    desired = wanted()
    nearly_full = healthy(desired, storage_used=int(9.5 * GIB))
    limited = with_stream(healthy(desired), "CHECKPOINTS", max_bytes=20 * GIB)

    full = by_name(evaluate(nearly_full, desired))["storage"]
    over = by_name(evaluate(limited, desired))["storage"]
    unknown = by_name(evaluate(healthy(desired, storage_max=None), desired))["storage"]

    assert full.status == "warn"
    assert over.status == "warn"
    assert "max_bytes allow" in over.found
    assert unknown.status == "warn"
    assert "could not be verified" in unknown.found


def test_the_text_and_json_reports_carry_every_check() -> None:
    desired = wanted()
    checks = evaluate(healthy(desired, tls=False), desired)

    text = doctor_text(checks).splitlines()
    document = doctor_json(checks)

    assert text[3].startswith("WARN  tls")
    assert " -> " in text[3]
    assert text[-1] == "9 passed, 1 warnings, 0 failed"
    assert '"ok":true' in document


@given(st.lists(st.integers(min_value=0, max_value=10_000), min_size=1, max_size=4))
def test_parse_version_reads_any_dotted_version(parts: list[int]) -> None:
    text = ".".join(map(str, parts))

    assert parse_version(text) == tuple(parts)
    assert parse_version(f"v{text}-beta.2") == tuple(parts)


@given(st.text(max_size=30))
def test_parse_version_never_raises(text: str) -> None:
    assert isinstance(parse_version(text), tuple)


@given(
    st.sampled_from(["http", "https"]),
    st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
    st.integers(1, 65535),
)
def test_an_http_monitoring_url_is_accepted(scheme: str, host: str, port: int) -> None:
    assert check_monitor_url(f"{scheme}://{host}:{port}/") == f"{scheme}://{host}:{port}"


@given(st.text(max_size=30).filter(lambda t: not t.startswith(("http://", "https://"))))
def test_anything_else_is_refused_naming_the_field_and_value(text: str) -> None:
    with pytest.raises(ValidationError) as caught:
        check_monitor_url(text)

    assert caught.value.field == "monitor_url"
    if "@" not in text:  # userinfo in a URL-like value is redacted
        assert caught.value.value == text


@pytest.mark.parametrize("url", ["http://host:notaport", "http://:8222", "http://[::1", ""])
def test_a_monitoring_url_without_a_host_or_with_a_bad_port_is_refused(url: str) -> None:
    with pytest.raises(ValidationError, match="monitor_url"):
        check_monitor_url(url)
