"""Atomic directory writes: build under a hidden temporary name, then rename into place."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_directory(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``path`` (an old one is removed after the swap).

    Readers see either the complete old directory or the complete new one, never a half-written one
    (up to the instant between the two renames, when ``path`` briefly does not exist).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_dead_temporaries(path)
    tmp = path.parent / f".tmp-{path.name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if path.exists():
        old = path.parent / f".old-{path.name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_dead_temporaries(path: Path) -> int:
    """Clean up after writers of ``path`` that were killed (their process is gone); returns how many were found.

    A killed ``atomic_directory`` leaves ``.tmp-NAME-PID`` (unfinished: deleted) and, if it died between its
    two renames, ``.old-NAME-PID`` with ``path`` missing: that complete previous version is put back.
    """
    path = Path(path)
    if not path.parent.is_dir():
        return 0
    pattern = re.compile(rf"^\.(tmp|old)-{re.escape(path.name)}-(\d+)$")
    found = 0
    for p in sorted(path.parent.iterdir()):
        m = pattern.match(p.name)
        if not m or _pid_alive(int(m.group(2))):
            continue
        found += 1
        if m.group(1) == "old" and not path.exists():
            os.rename(p, path)
        else:
            shutil.rmtree(p, ignore_errors=True)
    return found
