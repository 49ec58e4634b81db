"""Atomic writes and clean-up after killed writers: the one place the project writes files that must never be
seen half-written (checkpoints, shards, scenes, results, caches).

Every write goes to a hidden temporary sibling, ``.tmp-<name>-<pid>``, which its writer holds an advisory lock
(``flock``) on, and is renamed into place when complete. A directory that replaces an older one moves the old one
aside as ``.old-<name>-<pid>`` (also locked) for the instant between the two renames. A kill at any point leaves
only such hidden names; :func:`remove_dead_temporaries` deletes those whose lock is free (their writer is gone,
the kernel dropped its lock) and puts back an ``.old-`` directory whose replacement never arrived. A live writer's
temporaries, in this process or another, are never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

TEMPORARY = re.compile(r"^\.(tmp|old|del)-(.+)-(\d+)(\.[A-Za-z0-9]+)?$")
"""``.tmp-<name>-<pid>`` (being written), ``.old-<name>-<pid>`` (being replaced), ``.del-<name>-<pid>`` (being
deleted); a temporary may repeat the final name's suffix (writers that pick the format from it, e.g. videos)."""


def temporary_sibling(
    path: Path,
    kind: str = "tmp",
    directory: Optional[Path] = None,
    pid: Optional[int] = None,
    keep_suffix: bool = False,
) -> Path:
    """The hidden name ``path`` is written under (in ``directory``, default: beside ``path``) by process ``pid``
    (default: this one; processes that write one temporary together name it after the one that locks it)."""
    path = Path(path)
    suffix = path.suffix if keep_suffix else ""
    return Path(directory or path.parent) / f".{kind}-{path.name}-{os.getpid() if pid is None else int(pid)}{suffix}"


def lock(path: Path) -> int:
    """Take this process's exclusive lock on a file or directory; returns the descriptor that holds it."""
    fd = os.open(path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock(fd: Optional[int]) -> None:
    if fd is not None:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_dead_temporaries(directory: Path, names: Optional[Iterable[str]] = None) -> int:
    """Clean up what killed writers left in ``directory``; returns how many temporaries were dealt with.

    ``names`` restricts this to the temporaries of those final names (processes writing disjoint parts into one
    folder must not touch each other's); a temporary whose lock is held (a live writer) is always left alone.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return 0
    wanted = None if names is None else set(names)
    found = 0
    for p in sorted(directory.iterdir()):
        m = TEMPORARY.match(p.name)
        if not m or (wanted is not None and m.group(2) not in wanted):
            continue
        try:
            fd = lock(p)
        except (BlockingIOError, FileNotFoundError):  # a live writer's, or gone meanwhile
            continue
        try:
            final = directory / m.group(2)
            if m.group(1) == "old" and not final.exists():
                os.rename(p, final)  # killed between its two renames: the complete previous version goes back
            else:
                _remove(p)
            found += 1
        finally:
            unlock(fd)
    return found


@contextlib.contextmanager
def atomic_path(
    path: Path, directory: bool = False, temp_dir: Optional[Path] = None, keep_suffix: bool = False
) -> Iterator[Path]:
    """Yield a locked temporary to write ``path``'s content into (a new empty directory when ``directory``, else
    an empty file); on leaving the block normally it replaces ``path``, on an exception it is deleted.

    ``temp_dir`` puts the temporary elsewhere on the same file system (e.g. outside a folder whose every file is
    read as a checkpoint); ``keep_suffix`` ends the temporary's name with ``path``'s suffix (for writers that
    choose the format by it). Readers see the complete old ``path`` or the complete new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(Path(temp_dir or path.parent), names=[path.name])
    tmp = temporary_sibling(path, directory=temp_dir, keep_suffix=keep_suffix)
    _remove(tmp)
    if directory:
        tmp.mkdir()
    else:
        tmp.touch()
    fd = lock(tmp)
    try:
        try:
            yield tmp
        except BaseException:
            _remove(tmp)
            raise
        _replace(tmp, path, directory)
    finally:
        unlock(fd)


def _replace(tmp: Path, path: Path, directory: bool) -> None:
    if not directory or not path.exists():
        os.replace(tmp, path)
        return
    old = temporary_sibling(path, "old")
    _remove(old)
    old_fd = lock(path)  # the lock travels with the directory: a cleaner never restores it while we swap
    try:
        os.rename(path, old)
        os.rename(tmp, path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        unlock(old_fd)


def remove_tree(path: Path) -> None:
    """Delete a directory so that no reader ever sees it half-deleted: rename it to a hidden ``.del-`` name first
    (a kill mid-delete leaves only that, which :func:`remove_dead_temporaries` finishes)."""
    path = Path(path)
    hidden = temporary_sibling(path, "del")
    _remove(hidden)
    os.rename(path, hidden)
    _remove(hidden)


def atomic_write(path: Path, write: Callable[[Any], None], temp_dir: Optional[Path] = None) -> Path:
    """Write ``path`` atomically through ``write(file_object)`` (binary); returns ``path``."""
    with atomic_path(path, temp_dir=temp_dir) as tmp:
        with open(tmp, "wb") as f:
            write(f)
    return Path(path)


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` via a temporary and rename, so readers never see half a file."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, obj: Any, **dumps_kwargs) -> Path:
    dumps_kwargs.setdefault("indent", 2)
    return atomic_write_text(path, json.dumps(obj, **dumps_kwargs))


def atomic_torch_save(obj: Any, path: Path, temp_dir: Optional[Path] = None) -> Path:
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f), temp_dir=temp_dir)


def atomic_savez(path: Path, compressed: bool = True, **arrays) -> Path:
    """``numpy.savez(_compressed)`` to exactly ``path`` (a temporary's name would otherwise gain ``.npz``)."""
    import numpy as np

    save = np.savez_compressed if compressed else np.savez
    buf = io.BytesIO()
    save(buf, **arrays)
    return atomic_write_bytes(path, buf.getvalue())
