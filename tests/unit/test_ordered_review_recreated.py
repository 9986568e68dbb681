"""A stream deleted and re-created under a running ordered member, on a fake clock: the
member's reader survives the time the stream is missing and reads the new stream."""

from __future__ import annotations

from test_ordered_member import ListCursor, ListSource, Rig, T, new, settle

from message_bus.adapters.ordered.source import Record
from message_bus.adapters.ordered.store import StoreUnavailable
from message_bus.domain.errors import StreamError


class RecreatedSource(ListSource):
    """A list stream that can be deleted (reads fail, opens find no stream) and created
    again (a new generation, empty)."""

    def __init__(self) -> None:
        super().__init__()
        self.incarnation = 1
        self.missing = False

    async def generation(self) -> str:
        if self.missing:
            raise StreamError(self.stream, "does not exist; apply the stream catalog first")
        return f"g{self.incarnation}"

    async def open(self, start: int) -> ListCursor:
        if self.missing:
            raise StreamError(self.stream, "does not exist; apply the stream catalog first")
        return IncarnationCursor(self, start)

    def delete(self) -> None:
        self.missing = True
        self.records.clear()
        self.changed()

    def create(self) -> None:
        self.missing = False
        self.incarnation += 1


class IncarnationCursor(ListCursor):
    def __init__(self, source: RecreatedSource, start: int) -> None:
        super().__init__(source, start)
        self.incarnation = source.incarnation

    def take(self, limit: int) -> list[Record]:
        source = self.source
        assert isinstance(source, RecreatedSource)
        if source.missing or source.incarnation != self.incarnation:
            raise StoreUnavailable("its consumer was deleted")
        return super().take(limit)


async def test_a_member_reads_a_stream_that_was_deleted_and_created_again_from_its_start() -> None:
    rig = Rig()
    source = RecreatedSource()
    rig.source = source
    handled: list[int] = []
    member = await rig.member(lambda m: handled.append(m.payload["n"]))
    for n in range(3):
        source.add(new(n))
    await settle()
    assert handled == [0, 1, 2]
    source.delete()
    await rig.advance(T)  # the stream is missing for a while: reads and opens fail
    source.create()
    for n in range(3, 5):
        source.add(new(n))
    await rig.advance(2 * T)
    assert member.generation == "g2"
    assert handled == [0, 1, 2, 3, 4], "the member never read the re-created stream"
    await rig.close()


class UnsureSource(RecreatedSource):
    """A re-creatable list stream whose next ``unsure`` generation reads fail."""

    def __init__(self) -> None:
        super().__init__()
        self.unsure = 0

    async def generation(self) -> str:
        if self.unsure:
            self.unsure -= 1
            raise StoreUnavailable("stream info timed out")
        return await super().generation()


async def test_a_member_reopens_only_once_it_knows_the_stream_was_not_re_created() -> None:
    rig = Rig()
    source = UnsureSource()
    rig.source = source
    handled: list[int] = []
    member = await rig.member(lambda m: handled.append(m.payload["n"]))
    for n in range(3):
        source.add(new(n))
    await settle()
    assert handled == [0, 1, 2]
    source.delete()
    source.create()  # at once: the next open succeeds, on the new stream
    source.unsure = 1  # but the first look at its generation fails
    for n in range(3, 7):
        source.add(new(n))
    await rig.advance(2 * T)
    assert member.generation == "g2"
    assert handled == [0, 1, 2, 3, 4, 5, 6], "the new stream was read at the old positions"
    await rig.close()
