"""The pytest plugin (entry point ``pytest11``): the ``bus`` and ``embedded_nats_server`` fixtures.

Installed with the package, it is loaded by pytest automatically:

* ``bus`` (function scope): a :class:`~message_bus.testing.BusFixture`, an in-memory
  bus with JetStream's semantics on a manual clock that records what was published.
  Async, so it runs under pytest-asyncio, in the test's event loop; an ``async def``
  test that uses it is marked ``asyncio`` here, so it needs no mark in strict mode.
  Override the ``bus_catalog`` fixture (session scope) to give it a catalog of your own.
* ``embedded_nats_server`` (session scope): one nats-server with JetStream, started on
  loopback with a temporary store directory, with the catalog's streams applied
  (overridable through ``bus_catalog`` too), stopped and deleted at the end of the
  session. Tests share it, so each should use its own consumer groups and keys.

The contract suite against your own adapter is :func:`message_bus.testing.contract_tests`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import importlib.util
import inspect
from collections.abc import AsyncIterator, Generator, Iterator
from typing import TYPE_CHECKING

import pytest

from message_bus.domain.catalog import StreamCatalog

from .bus_fixture import BusFixture

if TYPE_CHECKING:
    from message_bus.app.embedded import EmbeddedNatsServer

HAS_PYTEST_ASYNCIO = importlib.util.find_spec("pytest_asyncio") is not None
"""Whether pytest-asyncio, which runs the async ``bus`` fixture, is installed."""

_STREAMS_TIMEOUT = 60.0
"""Seconds the embedded server's streams may take to be applied."""


@pytest.fixture(scope="session")
def bus_catalog() -> StreamCatalog | None:
    """The catalog of the ``bus`` fixture and of ``embedded_nats_server``'s streams;
    ``None`` is the DelTran catalog. Override it (session scope) in a ``conftest.py``."""
    return None


if HAS_PYTEST_ASYNCIO:
    import pytest_asyncio

    @pytest_asyncio.fixture(loop_scope="function")
    async def bus(bus_catalog: StreamCatalog | None) -> AsyncIterator[BusFixture]:
        """An in-memory bus on a manual clock that records what was published."""
        async with BusFixture(catalog=bus_catalog) as fixture:
            yield fixture

else:  # pragma: no cover

    @pytest.fixture
    def bus() -> BusFixture:
        """Needs pytest-asyncio."""
        pytest.fail("the bus fixture is async: install pytest-asyncio", pytrace=False)


@pytest.hookimpl(wrapper=True, trylast=True)
def pytest_pycollect_makeitem(
    collector: pytest.Module | pytest.Class, name: str, obj: object
) -> Generator[None, object, object]:
    """Mark ``async def`` tests that use ``bus`` to run under pytest-asyncio, also in its
    strict mode: the bus only runs on asyncio. (Inside pytest-asyncio's own wrapper,
    which turns marked coroutine tests into its items.)"""
    made = yield
    if HAS_PYTEST_ASYNCIO and inspect.iscoroutinefunction(obj):
        for item in made if isinstance(made, list) else [made]:
            if (
                isinstance(item, pytest.Function)
                and "bus" in item.fixturenames
                and item.get_closest_marker("asyncio") is None
            ):
                item.add_marker(pytest.mark.asyncio)
    return made


@pytest.fixture(scope="session")
def embedded_nats_server(bus_catalog: StreamCatalog | None) -> Iterator[EmbeddedNatsServer]:
    """A nats-server with JetStream and the catalog's streams, for the whole session.

    The server listens on a free loopback port (``server.url``), serves its monitoring
    endpoints on another (``server.monitor_url``, ``server.healthz()``) and keeps its
    store in a temporary directory that is deleted when the session ends.
    """
    from message_bus.app.embedded import EmbeddedNatsServer

    with EmbeddedNatsServer(server_name="pytest-embedded", monitor_port=0) as server:
        apply_streams_in_thread(server.url, bus_catalog)
        yield server


def apply_streams_in_thread(url: str, catalog: StreamCatalog | None) -> None:
    """Apply ``catalog``'s streams on the server at ``url``, in an event loop of its own
    on another thread, so it never meets a test's loop (which may be running)."""
    with concurrent.futures.ThreadPoolExecutor(1, "embedded-nats-streams") as pool:
        done = pool.submit(asyncio.run, _apply_streams(url, catalog))
        try:
            done.result(_STREAMS_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise TimeoutError(
                f"the streams were not applied on {url} within {_STREAMS_TIMEOUT} s"
            ) from None


async def _apply_streams(url: str, catalog: StreamCatalog | None) -> None:
    from message_bus.adapters.nats import NatsClient, NatsConfig, StreamManager

    client = NatsClient(NatsConfig(urls=[url]))
    await client.connect()
    try:
        await StreamManager(client).apply(catalog)
    finally:
        await client.close()
