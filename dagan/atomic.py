"""Atomic file writes: a file holds either its old content or its whole new content, never part of one.

Every file the project writes or replaces (checkpoints, shards, manifests, configs, JSON / PNG / TSV
outputs, compiled pipelines, benchmark results) goes through :func:`atomic_write`. The content goes
to a hidden temporary file beside the target (``.<name>.tmp-<pid>-<token><suffix>``: the same folder,
so the rename stays on one file system, and the target's suffix, for writers that choose a format by
it), is synced to the disk, renamed over the target (atomic on POSIX) and the folder is synced, so
neither a crash nor a power cut leaves a half-written target. When the writing raises (a full disk,
a library's error, Ctrl-C), the temporary file is deleted and the target keeps its old content; a
process killed mid-write leaves only its temporary file, which :func:`remove_stale_temporaries`
deletes later. New files get the permissions of a plain ``open(path, "w")``: 0o666 less the umask.
An error while writing names the target file (a full disk's message says where).

A folder of outputs that belong together (a prepared dataset, an evaluation) is written the same way
as a whole (:func:`atomic_directory`): into a hidden folder beside it, swapped in when complete.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# ``.<name>.tmp-<pid>-<token><suffix>``; files of earlier versions, ``.<name>.tmp-<pid>``, match too
TEMPORARY_PATTERN = re.compile(r"^\..+\.tmp-(\d+)(?:-[0-9a-f]{8}(?:\.[^.]+)?)?$")
UNSYNCABLE_FOLDER = (errno.EINVAL, errno.ENOTSUP, errno.ENOSYS)  # file systems that cannot sync a folder


@contextmanager
def atomic_write(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` for the block to write; when the block returns, it becomes ``path``.

    The block writes the whole content to the yielded path (passing the name to a writer, or opening
    it). On success the file is synced and renamed over ``path``; when the block raises, the file is
    deleted and ``path`` is left as it was. ``path``'s folder is created when missing.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{path.suffix}")
    try:
        yield tmp
        _sync(tmp)
        os.replace(tmp, path)
    except OSError as err:
        if err.filename is not None:
            raise
        # e.g. a full disk: name the file, keep the message (an OSError raised without an errno has only its text)
        raise OSError(err.errno, err.strerror or str(err), str(path)) from None
    finally:
        tmp.unlink(missing_ok=True)
    try:
        _sync(path.parent)  # makes the rename itself durable
    except OSError as err:
        if err.errno not in UNSYNCABLE_FOLDER:
            raise


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_write`)."""
    with atomic_write(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_directory(target: str | Path, marker: str | None = None) -> Iterator[Path]:
    """Yield an empty folder beside ``target`` for the block to fill; when the block returns, it replaces ``target``
    whole, so that ``target`` holds either the old outputs or all of the new ones.

    When the block raises (a full disk, Ctrl-C), the new folder is deleted and ``target`` is left as it was.
    With a ``marker``, ``target`` may already exist only if it is empty or holds ``marker`` (a file this project wrote
    there), so that a wrong output folder never replaces somebody's unrelated folder (without one, the caller checks).
    Folders left by killed writers (``.<name>.tmp-<pid>-*`` of processes that have ended) are deleted first.
    """
    target = Path(target)
    if marker is not None and target.exists() and any(target.iterdir()) and not (target / marker).exists():
        raise FileExistsError(f"{target} exists, is not empty and has no {marker}, so it was not written by this "
                              "project; choose a new or empty output folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    for stale in target.parent.glob(f".{target.name}.tmp-*"):
        pid = stale.name.removeprefix(f".{target.name}.tmp-").split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not _other_process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-{os.getpid()}-", dir=target.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary shared folder
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    replace_directory(staging, target)


@contextmanager
def atomic_files(folder: str | Path) -> Iterator[Path]:
    """Yield a hidden folder inside ``folder`` for the block to write files into; when the block returns, every file
    moves to the same relative place in ``folder`` (replacing a file of that name), so that a block that raises (a
    full disk, Ctrl-C) adds nothing to ``folder``. Unlike :func:`atomic_directory`, the other files of ``folder``
    stay. A ``folder`` created here is removed again when nothing came of it; staging folders of killed writers
    (``.staging-<pid>-*``) are deleted first.
    """
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob(".staging-*"):
        pid = stale.name.removeprefix(".staging-").split("-", 1)[0]
        if stale.is_dir() and pid.isdigit() and not _other_process_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=f".staging-{os.getpid()}-", dir=folder))
    try:
        yield staging
        for path in sorted(staging.rglob("*")):
            if path.is_file():
                target = folder / path.relative_to(staging)
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(path, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise
    shutil.rmtree(staging, ignore_errors=True)


def replace_directory(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target`` (same file system), removing what was there."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
        target.rename(old)
    new.rename(target)
    if old is not None:
        shutil.rmtree(old)


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete the temporary files in ``folder`` that writers killed mid-write left behind; return them.

    A temporary file is stale when the process that wrote it has ended, or is this process (a restarted
    container often runs with the same pid): call this before this process writes into ``folder``.
    """
    folder = Path(folder)
    stale = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        match = TEMPORARY_PATTERN.match(path.name)
        if match and not _other_process_alive(int(match.group(1))):
            path.unlink(missing_ok=True)
            stale.append(path)
    return stale


def _sync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _other_process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
