"""The Grafana dashboard in infra/grafana: its queries name only metrics the bus exports,
and the compose file provisions it.

The exported names are read from a real registry after the bus's metrics are created in
it, so a renamed metric fails here instead of leaving an empty panel.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry

from message_bus.adapters.telemetry.metrics import BusMetrics

INFRA = Path(__file__).resolve().parents[2] / "infra"
GRAFANA = INFRA / "grafana"
DASHBOARDS = sorted((GRAFANA / "dashboards").glob("*.json"))
PROVIDER = GRAFANA / "provisioning" / "dashboards" / "deltran.yml"
DATASOURCE = GRAFANA / "provisioning" / "datasources" / "prometheus.yml"
COMPOSE = (INFRA / "docker-compose.nats.yml").read_text()

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:$.])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"})
_SUFFIXES = {"counter": ("_total",), "gauge": ("",), "histogram": ("_bucket", "_sum", "_count")}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    aggregations, keywords, label names (in matchers or grouping) or template variables."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.groups()
        if call is None and name.lower() not in _KEYWORDS:
            names.add(name)
    return names


def exported_names() -> set[str]:
    """Every series name the bus's metrics expose, read from a registry holding them."""
    registry = CollectorRegistry()
    BusMetrics(registry)
    names = set()
    for family in registry.collect():
        for suffix in _SUFFIXES[family.type]:
            names.add(family.name + suffix)
    return names


def dashboard(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(path.read_text())
    return document


def panels(document: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for panel in document["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return found


def queries(document: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, expr) of every panel target."""
    return [
        (panel["title"], target["expr"])
        for panel in panels(document)
        for target in panel.get("targets", [])
    ]


def test_there_is_the_bus_dashboard() -> None:
    assert [p.name for p in DASHBOARDS] == ["deltran-message-bus.json"]


def test_the_exported_names_come_from_the_registry() -> None:
    names = exported_names()

    assert "message_bus_publish_total" in names
    assert "message_bus_publish_duration_seconds_bucket" in names
    assert "nats_connection_status" in names
    assert "message_bus_publish" not in names


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        (
            'sum by (message_type, status) (rate(message_bus_publish_total{status=~"a|b"}[5m]))',
            {"message_bus_publish_total"},
        ),
        (
            'histogram_quantile(0.99, sum by (le) (rate(x_bucket{a="$v"}[$__rate_interval])))',
            {"x_bucket"},
        ),
        ("a / on(job) group_left(instance) b offset 5m", {"a", "b"}),
        (
            'max by (status) (nats_connection_status) > bool 0 and up{job="x"}',
            {"nats_connection_status", "up"},
        ),
        ("sum(increase(c_total[$__range])) or vector(0)", {"c_total"}),
    ],
)
def test_the_query_parser_finds_metric_names_only(expr: str, names: set[str]) -> None:
    assert metric_names(expr) == names


@given(
    st.sampled_from(sorted(exported_names())),
    st.sampled_from(["{}", 'sum(rate({}{{a="b"}}[5m]))', "sum by (le, status) ({})", "{} > 0"]),
)
def test_the_parser_finds_any_exported_name_in_any_wrapping(name: str, template: str) -> None:
    assert metric_names(template.format(name)) == {name}


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_every_panel_query_names_only_metrics_the_bus_exports(path: Path) -> None:
    exported = exported_names()
    document = dashboard(path)

    assert queries(document), "no panel queries"
    for title, expr in queries(document):
        names = metric_names(expr)
        assert names, f"panel {title!r}: no metric in {expr!r}"
        unknown = names - exported
        assert not unknown, f"panel {title!r} reads {sorted(unknown)}, not exported by the bus"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_template_variables_read_exported_metrics(path: Path) -> None:
    exported = exported_names()
    for variable in dashboard(path)["templating"]["list"]:
        query = (
            variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        )
        metric = re.fullmatch(r"label_values\((\w+),\s*\w+\)", query)

        assert metric is not None, query
        assert metric.group(1) in exported


def test_every_metric_the_bus_exports_has_a_panel() -> None:
    shown = {
        name for path in DASHBOARDS for _, q in queries(dashboard(path)) for name in metric_names(q)
    }
    registry = CollectorRegistry()
    BusMetrics(registry)

    for family in registry.collect():
        series = {family.name + suffix for suffix in _SUFFIXES[family.type]}
        assert series & shown, f"{family.name} is on no panel"


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_panels_use_the_provisioned_datasource_and_fit_the_grid(path: Path) -> None:
    uid = re.search(r"^\s+uid:\s*(\S+)$", DATASOURCE.read_text(), re.MULTILINE)
    assert uid is not None
    document = dashboard(path)
    ids = [panel["id"] for panel in panels(document)]

    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(document):
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == uid.group(1), panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == uid.group(1), panel["title"]


def test_the_compose_file_mounts_the_dashboards_where_the_provider_reads_them() -> None:
    path = re.search(r"^\s+path:\s*(\S+)$", PROVIDER.read_text(), re.MULTILINE)
    assert path is not None
    mounts = dict(re.findall(r"^\s+- \./(grafana/[^:]+):([^:]+):ro$", COMPOSE, re.MULTILINE))

    assert mounts["grafana/provisioning"] == "/etc/grafana/provisioning"
    assert mounts["grafana/dashboards"] == path.group(1)
    for dashboard_file in DASHBOARDS:
        assert dashboard_file.parent == INFRA / "grafana" / "dashboards"
    assert "type: file" in PROVIDER.read_text()
    assert PROVIDER.parent.name == "dashboards"  # /etc/grafana/provisioning/dashboards/
