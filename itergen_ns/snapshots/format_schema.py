"""What a snapshot shard is on disk (layout in format.py): format constants, ``meta.json`` fields, root and shard paths.

Shared by the writer (format_writer.py) and the reader (format_reader.py) so both agree on one definition.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from itergen_ns import io

FORMAT_NAME = "itergen-snapshots"
FORMAT_VERSION = 1
REQUIRED_ARRAYS = ("images", "c2w", "intrinsics", "input_indices", "steps", "renders")
OPTIONAL_ARRAYS = ("masks", "render_latents", "depths")


@dataclass
class ShardMeta:
    """What ``meta.json`` of a shard records (the exporter fills every field; shards written by other tools may
    leave some at their defaults). ``format_version``, ``name`` and ``bytes`` are set by :meth:`ShardWriter.commit`."""

    scene: str = "?"
    """Shard-name-safe scene identifier (``<collection>_<scene>``)."""
    source: str = ""
    """The scene folder exported."""
    run: int = 0
    seed: int = 0
    method: str = ""
    num_frames: int = 0
    height: int = 0
    width: int = 0
    num_input_views: int = 0
    input_indices: List[int] = field(default_factory=list)
    steps: List[int] = field(default_factory=list)
    """Training steps of the snapshots (renders.npy's first axis)."""
    max_steps: int = 0
    every: int = 0
    num_gaussians: int = 0
    frame_files: List[str] = field(default_factory=list)
    has_masks: bool = False
    render_latents: Optional[Dict] = None
    """``{"checkpoint", "shape", "dtype"}`` of precomputed render latents, or None."""
    seconds: float = 0.0
    created: str = ""
    format_version: int = FORMAT_VERSION
    name: str = ""
    bytes: int = 0

    @classmethod
    def from_dict(cls, meta: Dict) -> "ShardMeta":
        """The known fields of a ``meta.json`` dict (unknown keys dropped, missing ones at their defaults)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in known})


def payload_bytes(
    num_frames: int,
    height: int,
    width: int,
    num_steps: int,
    num_inputs: int,
    masks: bool = False,
    latent_shape: Optional[Tuple[int, int, int]] = None,
    depths: bool = False,
) -> int:
    """Bytes of a shard's arrays (what ``meta["bytes"]`` records; .npy headers and meta.json add ~1 KB).

    Used to project the size of an export before running it; the dtypes are the ones documented in format.py.
    """
    frame = height * width * 3  # uint8 RGB
    total = num_frames * frame + num_frames * 12 * 4 + num_frames * 4 * 4  # images, c2w, intrinsics
    total += num_inputs * 8 + num_steps * 8 + num_steps * num_frames * frame  # input_indices, steps, renders
    if masks:
        total += num_frames * height * width
    if latent_shape is not None:
        total += num_steps * num_frames * int(np.prod(latent_shape)) * 2  # float16
    if depths:
        total += num_steps * num_frames * height * width * 2  # float16
    return int(total)


def ensure_format(root: Path) -> None:
    """Create ``root/format.json`` or check that an existing root holds this format version."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    fmt = root / "format.json"
    if fmt.exists():
        try:
            info = json.loads(fmt.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{fmt}: not valid JSON ({err}); expected a snapshot format file") from err
        if info.get("format") != FORMAT_NAME or info.get("version") != FORMAT_VERSION:
            raise ValueError(
                f"{fmt}: holds format {info.get('format')!r} version {info.get('version')!r}, expected "
                f"{FORMAT_NAME!r} version {FORMAT_VERSION}; export into a new directory"
            )
        return
    io.atomic_write_text(fmt, json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}, indent=2))


def shard_dir(root: Path, name: str) -> Path:
    """Final directory of shard ``name`` under a snapshot root."""
    return Path(root) / "shards" / name


def shard_exists(root: Path, name: str) -> bool:
    """A shard is finished when its directory holds meta.json (the rename makes that atomic)."""
    return (shard_dir(root, name) / "meta.json").exists()
