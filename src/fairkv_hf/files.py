"""Crash-safe files: whole-file replacement and build-once outputs shared by concurrent processes.

A process killed while it writes (SIGKILL, out of memory, a closed laptop) must never leave a half-written file
where a later run reads one. ``atomic_write`` writes a temporary file in the target's folder and renames it over
the target (``os.replace`` is atomic on one file system), so readers see the old file or the new one, never a
mix; ``build_once`` makes an expensive output (a converted model) exactly once when several processes ask for it
at the same moment. Locks are ``fcntl.flock`` on a hidden ``.<name>.lock`` file beside what they guard (POSIX;
opened for writing, so that the NFS emulation of flock works too): the kernel drops a lock when its holder dies.
The empty lock file stays, since removing it would race with the next process that opens it.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

TEMP_MARK = ".tmp-"


def _temp_prefix(target: Path) -> str:
    """Name prefix of ``target``'s temporary files: hidden, and unmistakably ours (removable when stale)."""
    return f".{target.name}{TEMP_MARK}"


def _new_temp_file(target: Path) -> tuple[int, Path]:
    """A new, empty temporary file beside ``target``: its descriptor and path.

    Unlike ``tempfile.mkstemp`` (mode 0600) it gets the permissions any new file gets (0666 less the umask), so
    the file that replaces ``target`` is as readable as one written in place.
    """
    while True:
        temp = target.parent / f"{_temp_prefix(target)}{secrets.token_hex(6)}"
        try:
            return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), temp
        except FileExistsError:
            continue


def atomic_write(path: Path, data: str | bytes) -> None:
    """Replace ``path`` with ``data`` (text as UTF-8) in one step: readers never see a partial file.

    The data goes to a unique temporary file in the same folder, is flushed to disk, then renamed over ``path``.
    On an exception the temporary file is removed; a process killed before the rename leaves the old ``path``
    intact (and a hidden ``.<name>.tmp-*`` file, removed by ``remove_stale_temps``).
    """
    path = Path(path)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, temp = _new_temp_file(path)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_output(path: Path) -> Iterator[Path]:
    """A temporary path for a writer that wants a file name (e.g. ``savefig``); renamed to ``path`` on success."""
    path = Path(path)
    fd, temp = _new_temp_file(path)
    os.close(fd)
    try:
        yield temp
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def remove_stale_temps(target: Path) -> None:
    """Delete the temporary files and folders that killed writers of ``target`` left beside it.

    Call it only where no other process can be writing ``target`` at the same time (under ``locked(target)``).
    """
    target = Path(target)
    for leftover in target.parent.glob(_temp_prefix(target) + "*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
        else:
            leftover.unlink(missing_ok=True)


def lock_file(target: Path) -> Path:
    """The lock file that guards ``target``: ``.<name>.lock`` in the same folder."""
    target = Path(target)
    return target.parent / f".{target.name}.lock"


@contextmanager
def locked(target: Path) -> Iterator[None]:
    """Hold an exclusive inter-process lock on ``target`` (its ``lock_file``) for the ``with`` block.

    Other processes block in ``locked`` until the holder leaves the block or dies. The folder is created if needed.
    """
    path = lock_file(target)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def build_once(target: Path, build: Callable[[Path], None]) -> Path:
    """Return ``target`` (a file or a folder), first building it with ``build(temp_path)`` if it does not exist.

    Concurrent callers are serialized by ``locked(target)``: the first builds into a fresh temporary
    path beside the target and renames it into place; the others wait and then use its result. Temporaries of
    builders that were killed are removed first, so no partial output survives. ``build`` must create
    ``temp_path`` (a file or a folder); if it raises, nothing is left behind and the error propagates.
    """
    target = Path(target)
    if target.exists():  # only ever appears whole (renamed into place), so no lock is needed to trust it
        return target
    with locked(target):
        if target.exists():
            return target
        remove_stale_temps(target)
        temp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target)))
        output = temp / target.name
        try:
            build(output)
            os.replace(output, target)
        finally:
            shutil.rmtree(temp, ignore_errors=True)
    return target
