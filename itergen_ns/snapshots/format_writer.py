"""Writing snapshot shards atomically: assembled in a locked hidden temporary, renamed into place on commit.

A shard therefore exists whole or not at all; the writer's advisory lock (flock) on its temporary lets the clean-up
after a killed export (``remove_stale_temporaries``) skip a writer that is still running.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Dict, Iterable, Optional, Set, Union

import numpy as np

from itergen_ns import io
from itergen_ns.snapshots.format_schema import FORMAT_VERSION, REQUIRED_ARRAYS, ShardMeta, ensure_format, shard_dir


class ShardWriter:
    """Assemble one shard in a hidden temp dir and rename it into place on ``commit``.

    Large arrays (the render stack) are written through memory-mapped ``.npy`` files so a CO3D-size export
    never holds them in RAM. Leaving the ``with`` block by an exception deletes the temp dir, so an
    interrupted export leaves no partial shard; a leftover from a killed process is removed on the next run.
    """

    def __init__(self, root: Path, name: str):
        ensure_format(root)
        self.name = name
        self.final = shard_dir(root, name)
        if self.final.exists():
            raise FileExistsError(f"{self.final} already exists")
        self.tmp = io.temporary_sibling(self.final)
        self.nbytes = 0
        self.keys: Set[str] = set()
        self._lock: Optional[int] = None

    def __enter__(self) -> "ShardWriter":
        if self.tmp.exists():
            shutil.rmtree(self.tmp)
        self.tmp.mkdir(parents=True)
        self._lock = io.lock(self.tmp)  # "in use" for remove_stale_temporaries in other processes
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        # an exception, or leaving without commit(): nothing of this shard may stay behind
        if self.tmp.exists():
            shutil.rmtree(self.tmp, ignore_errors=True)
        io.unlock(self._lock)
        self._lock = None

    def save(self, key: str, arr: np.ndarray) -> None:
        """Store an in-memory array as ``key.npy``."""
        np.save(self.tmp / f"{key}.npy", np.ascontiguousarray(arr))
        self.nbytes += arr.nbytes
        self.keys.add(key)

    def open(self, key: str, shape, dtype) -> np.memmap:
        """A writable memory-mapped array stored as ``key.npy``."""
        arr = np.lib.format.open_memmap(self.tmp / f"{key}.npy", mode="w+", dtype=dtype, shape=tuple(shape))
        self.nbytes += arr.nbytes
        self.keys.add(key)
        return arr

    def commit(self, meta: Union[ShardMeta, Dict]) -> Path:
        """Write ``meta.json`` last and rename the shard into place; FileExistsError if another writer won."""
        missing = [k for k in REQUIRED_ARRAYS if k not in self.keys]
        if missing:
            raise ValueError(f"shard {self.name}: missing arrays {missing}")
        meta = dataclasses.asdict(meta) if isinstance(meta, ShardMeta) else dict(meta)
        meta.update(format_version=FORMAT_VERSION, name=self.name, bytes=int(self.nbytes))
        (self.tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        taken = FileExistsError(f"{self.final}: written meanwhile by another export into the same root")
        if self.final.exists():
            raise taken
        try:
            os.rename(self.tmp, self.final)
        except OSError as err:  # the other writer's rename came first (ENOTEMPTY / EEXIST)
            if self.final.exists():
                raise taken from err
            raise
        return self.final


def write_shard(root: Path, name: str, arrays: Dict[str, np.ndarray], meta: Dict) -> Path:
    """Write one shard from in-memory arrays, atomically (see ShardWriter)."""
    with ShardWriter(root, name) as writer:
        for key, arr in arrays.items():
            if arr is not None:
                writer.save(key, arr)
        return writer.commit(meta)


def remove_stale_temporaries(root: Path, names: Optional[Iterable[str]] = None) -> int:
    """Delete half-written shard dirs left by a killed export; returns how many were removed.

    ``names`` restricts this to the temporaries of those shards: processes exporting disjoint ``--shard i/n``
    parts into one root must not delete each other's shards in flight. A temporary whose writer is still
    running (it holds the directory's lock) is never deleted, whatever ``names`` says.
    """
    return io.remove_dead_temporaries(Path(root) / "shards", names)
