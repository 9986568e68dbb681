"""Stream backups without a server: stream names, manifests and their checksums, the
progress display, and the ``streams backup``/``restore`` command lines refused before
any I/O."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from message_bus.adapters.nats.snapshots import (
    MANIFEST_FORMAT,
    SnapshotManifest,
    check_stream_name,
    file_sha256,
    manifest_path,
    snapshot_path,
)
from message_bus.app.cli import run_cli
from message_bus.app.cli.transfer_progress import TransferProgress, size_text
from message_bus.domain.errors import BackupError, ValidationError

FORBIDDEN = " \t\n.*>/\\\x00"
UNREACHABLE = "nats://127.0.0.1:1"
NAMES = st.text(
    alphabet=st.characters(blacklist_characters=FORBIDDEN, blacklist_categories=("Zs", "Cs")),
    min_size=1,
    max_size=40,
).filter(lambda s: not any(c.isspace() for c in s))


@given(NAMES)
def test_a_stream_name_without_forbidden_characters_is_accepted(name: str) -> None:
    assert check_stream_name(name) == name


@given(NAMES, st.sampled_from(FORBIDDEN), st.integers(min_value=0, max_value=40))
def test_a_stream_name_with_a_forbidden_character_is_refused_naming_it(
    name: str, bad: str, at: int
) -> None:
    wrong = name[:at] + bad + name[at:]

    with pytest.raises(ValidationError) as caught:
        check_stream_name(wrong)

    assert caught.value.field == "stream"
    assert caught.value.value == wrong


def test_an_empty_or_overlong_stream_name_is_refused() -> None:
    for wrong in ("", "S" * 256):
        with pytest.raises(ValidationError, match="stream"):
            check_stream_name(wrong)


def write_backup(directory: Path, stream: str = "PAYMENTS", data: bytes = b"snapshot") -> None:
    snapshot_path(directory, stream).write_bytes(data)
    manifest = SnapshotManifest(
        stream=stream,
        sha256=file_sha256(snapshot_path(directory, stream)),
        size=len(data),
        chunks=1,
        messages=3,
        consumers=1,
        created="2026-01-01T00:00:00+00:00",
        config={"name": stream, "subjects": ["pay.>"]},
        state={"messages": 3, "consumer_count": 1},
    )
    manifest_path(directory, stream).write_text(manifest.to_json())


def test_a_manifest_reads_back_as_written_and_verifies(tmp_path: Path) -> None:
    write_backup(tmp_path)

    manifest = SnapshotManifest.load(tmp_path, "PAYMENTS")
    manifest.verify(tmp_path)

    assert json.loads(manifest_path(tmp_path, "PAYMENTS").read_text())["format"] == (
        MANIFEST_FORMAT
    )
    assert (manifest.messages, manifest.consumers, manifest.size) == (3, 1, 8)
    assert manifest.config["subjects"] == ["pay.>"]


def test_a_changed_snapshot_of_the_same_size_fails_its_checksum(tmp_path: Path) -> None:
    write_backup(tmp_path)
    snapshot_path(tmp_path, "PAYMENTS").write_bytes(b"snapshoT")
    manifest = SnapshotManifest.load(tmp_path, "PAYMENTS")

    with pytest.raises(BackupError, match="sha256") as caught:
        manifest.verify(tmp_path)

    assert caught.value.stream == "PAYMENTS"
    assert caught.value.path == str(snapshot_path(tmp_path, "PAYMENTS"))


def test_a_truncated_or_missing_snapshot_is_refused(tmp_path: Path) -> None:
    write_backup(tmp_path)
    manifest = SnapshotManifest.load(tmp_path, "PAYMENTS")
    snapshot_path(tmp_path, "PAYMENTS").write_bytes(b"snap")
    with pytest.raises(BackupError, match="4 bytes, the manifest says 8"):
        manifest.verify(tmp_path)
    snapshot_path(tmp_path, "PAYMENTS").unlink()
    with pytest.raises(BackupError, match="missing"):
        manifest.verify(tmp_path)


def test_a_missing_foreign_or_broken_manifest_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BackupError, match="no backup manifest"):
        SnapshotManifest.load(tmp_path, "PAYMENTS")
    write_backup(tmp_path, "OTHER")
    manifest_path(tmp_path, "OTHER").rename(manifest_path(tmp_path, "PAYMENTS"))
    with pytest.raises(BackupError, match="manifest of stream 'OTHER'"):
        SnapshotManifest.load(tmp_path, "PAYMENTS")
    manifest_path(tmp_path, "PAYMENTS").write_text("{not json")
    with pytest.raises(BackupError, match="unreadable"):
        SnapshotManifest.load(tmp_path, "PAYMENTS")


def test_on_a_terminal_the_bar_is_redrawn_in_place_and_ends_with_a_newline() -> None:
    screen = io.StringIO()
    progress = TransferProgress("backup", screen, tty=True)

    progress("PAYMENTS", 0, 2048)
    progress("PAYMENTS", 1, 2048)  # same percentage: not redrawn
    progress("PAYMENTS", 1024, 2048)
    progress("PAYMENTS", 2048, 2048)

    frames = screen.getvalue().split("\r\x1b[K")[1:]
    assert len(frames) == 3
    assert frames[1].startswith("backup PAYMENTS [" + "#" * 15 + "." * 15 + "]  50%")
    assert frames[2].endswith("100%  2.0 KiB\n")
    assert "\n" not in "".join(frames[:2])


def test_off_a_terminal_a_line_is_written_at_each_quarter() -> None:
    log = io.StringIO()
    progress = TransferProgress("restore", log, tty=False)

    for done in range(0, 4097, 64):
        progress("PAYMENTS", done, 4096)

    assert log.getvalue().splitlines() == [
        "restore PAYMENTS: 25% (1.0 KiB)",
        "restore PAYMENTS: 50% (2.0 KiB)",
        "restore PAYMENTS: 75% (3.0 KiB)",
    ]


def test_sizes_read_in_binary_units() -> None:
    assert [size_text(n) for n in (0, 1023, 1536, 5 * 1024 * 1024)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 MiB",
    ]


async def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = await run_cli(list(argv))
    return code, capsys.readouterr().err


async def test_a_bad_stream_name_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in ("backup", "restore"):
        code, err = await cli(
            capsys, "streams", action, str(tmp_path), "--stream", "PAY.MENTS", "--url", UNREACHABLE
        )

        assert code == 2
        assert "stream" in err
        assert "PAY.MENTS" in err
        assert "cannot reach" not in err


async def test_a_corrupted_backup_is_refused_before_connecting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_backup(tmp_path)
    snapshot_path(tmp_path, "PAYMENTS").write_bytes(b"snapshoT")

    code, err = await cli(capsys, "streams", "restore", str(tmp_path), "--url", UNREACHABLE)

    assert code == 1
    assert "PAYMENTS" in err
    assert "sha256" in err


async def test_restoring_from_a_missing_or_empty_directory_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = await cli(capsys, "streams", "restore", str(tmp_path / "nowhere"))
    assert code == 2
    assert "directory" in err

    code, err = await cli(capsys, "streams", "restore", str(tmp_path), "--url", UNREACHABLE)
    assert code == 1
    assert "no backup manifests" in err


async def test_the_memory_backend_has_nothing_to_back_up(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = await cli(capsys, "streams", "backup", str(tmp_path), "--backend", "memory")

    assert code == 2
    assert "NATS server" in err
