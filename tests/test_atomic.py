"""Atomic file writes (dagan/atomic.py): old or whole new content, synced, no temporary left behind."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from dagan import atomic
from dagan.atomic import (
    TEMPORARY_PATTERN,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    remove_stale_temporaries,
)

REPO = Path(__file__).resolve().parents[1]


def test_the_new_content_replaces_the_old_and_nothing_else_is_left(tmp_path):
    target = tmp_path / "deep" / "folder" / "metrics.json"  # missing folders are created
    assert atomic_write_text(target, "old\n") == target
    atomic_write_text(target, "new ✓\n")
    assert target.read_text(encoding="utf-8") == "new ✓\n"
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert [path.name for path in target.parent.iterdir()] == ["metrics.json"]


def test_the_temporary_file_is_hidden_beside_the_target_keeps_its_suffix_and_is_recognised(tmp_path):
    target = tmp_path / "pipeline.yaml"
    with atomic_write(target) as first, atomic_write(target) as second:
        assert first.parent == target.parent and first.name.startswith(".pipeline.yaml.tmp-")
        assert first.suffix == ".yaml", "writers that pick the format by suffix (kfp, PIL) see the target's"
        assert first != second, "two writers of one target never share a temporary file"
        assert TEMPORARY_PATTERN.match(first.name).group(1) == str(os.getpid())
        first.write_text("first")
        second.write_text("second")
    assert target.read_text() == "first"  # the last to finish wins, whole
    assert [path.name for path in tmp_path.iterdir()] == ["pipeline.yaml"]


@pytest.mark.parametrize("existing", [True, False])
def test_a_writer_that_raises_leaves_the_target_as_it_was_and_no_temporary(tmp_path, existing):
    target = tmp_path / "checkpoint.pt"
    if existing:
        target.write_bytes(b"the earlier checkpoint")
    with pytest.raises(OSError, match="disk full"), atomic_write(target) as tmp:
        tmp.write_bytes(b"half of the new one")
        raise OSError(errno.ENOSPC, "disk full")
    assert [path.name for path in tmp_path.iterdir()] == (["checkpoint.pt"] if existing else [])
    if existing:
        assert target.read_bytes() == b"the earlier checkpoint"


def test_a_writer_that_writes_nothing_is_an_error_not_an_empty_target(tmp_path):
    target = tmp_path / "page.html"
    target.write_text("earlier")
    with pytest.raises(FileNotFoundError), atomic_write(target):
        pass
    assert target.read_text() == "earlier"


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_new_files_get_the_permissions_of_a_plain_write(tmp_path, umask):
    previous = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "atomic.txt", "x")
        with atomic_write(tmp_path / "by_name.png") as tmp:  # a writer that creates the file itself
            tmp.write_bytes(b"x")
        (tmp_path / "plain.txt").write_text("x")
    finally:
        os.umask(previous)
    mode = stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode)
    assert mode == 0o666 & ~umask
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == mode
    assert stat.S_IMODE((tmp_path / "by_name.png").stat().st_mode) == mode


def test_the_content_is_synced_before_the_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def recording_fsync(descriptor):
        events.append(("fsync", Path(os.readlink(f"/proc/self/fd/{descriptor}"))))
        real_fsync(descriptor)

    def recording_replace(source, destination):
        events.append(("replace", Path(destination)))
        real_replace(source, destination)

    monkeypatch.setattr(atomic.os, "fsync", recording_fsync)
    monkeypatch.setattr(atomic.os, "replace", recording_replace)
    target = tmp_path / "config.yaml"
    with atomic_write(target) as tmp:
        tmp.write_text("a: 1\n")
    assert events == [("fsync", tmp), ("replace", target), ("fsync", tmp_path)]


def test_a_failed_sync_leaves_the_target_but_a_folder_that_cannot_sync_is_tolerated(tmp_path, monkeypatch):
    real_fsync = os.fsync
    failure = {"file": errno.EIO, "folder": errno.EINVAL}

    def fsync(descriptor):
        kind = "folder" if stat.S_ISDIR(os.fstat(descriptor).st_mode) else "file"
        if failure[kind]:
            raise OSError(failure[kind], os.strerror(failure[kind]))
        real_fsync(descriptor)

    monkeypatch.setattr(atomic.os, "fsync", fsync)
    target = tmp_path / "manifest.json"
    target.write_text("earlier")
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_text(target, "new")
    assert target.read_text() == "earlier" and [path.name for path in tmp_path.iterdir()] == ["manifest.json"]
    failure["file"] = 0  # the file syncs; the folder's file system cannot (EINVAL): the write stands
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    failure["folder"] = errno.EIO  # any other folder error is reported
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write_text(target, "newer")


KILLED_WRITER = textwrap.dedent("""
    import sys, time
    from dagan.atomic import atomic_write
    with atomic_write(sys.argv[1]) as tmp, tmp.open("wb") as handle:
        handle.write(b"half of the new content")
        handle.flush()
        print(tmp, flush=True)
        time.sleep(60)
""")


def test_a_writer_killed_mid_write_leaves_the_target_and_its_temporary_is_removed_later(tmp_path):
    target = tmp_path / "step-00000004.pt"
    target.write_bytes(b"the earlier checkpoint")
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(target)], cwd=REPO, stdout=subprocess.PIPE,
                              text=True)
    try:
        temporary = Path(writer.stdout.readline().strip())
        assert temporary.read_bytes() == b"half of the new content"
        assert remove_stale_temporaries(tmp_path) == [], "a live writer's file is left alone"
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        writer.stdout.close()
    assert target.read_bytes() == b"the earlier checkpoint"
    assert remove_stale_temporaries(tmp_path) == [temporary]
    assert [path.name for path in tmp_path.iterdir()] == [target.name]


def test_stale_temporaries_are_those_of_ended_processes_or_this_one(tmp_path):
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    ended_pid = int(ended.stdout)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            f".a.pt.tmp-{ended_pid}-0123abcd.pt": True,  # killed writer
            f".b.pt.tmp-{ended_pid}": True,  # an earlier version's name
            f".c.yaml.tmp-{os.getpid()}-89abcdef.yaml": True,  # this process: a restarted container's pid
            f".d.pt.tmp-{alive.pid}-0123abcd.pt": False,  # a writer still running
            "e.pt.tmp": False, ".f": False, "g.pt": False,  # not ours
        }
        for name in names:
            (tmp_path / name).write_text("x")
        removed = remove_stale_temporaries(tmp_path)
    finally:
        alive.kill()
        alive.wait()
    assert sorted(path.name for path in removed) == sorted(name for name, stale in names.items() if stale)
    assert sorted(path.name for path in tmp_path.iterdir()) == sorted(name for name, stale in names.items()
                                                                       if not stale)
    assert remove_stale_temporaries(tmp_path / "missing") == []
