"""Reading snapshot shards: a finished shard memory-mapped and checked, the finished shards of a root, their summary.

Every problem is a ValueError (or a warning, for ``list_shards``) naming the file, so a bad shard is found by name.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from itergen_ns.snapshots.format_schema import (
    FORMAT_VERSION,
    OPTIONAL_ARRAYS,
    REQUIRED_ARRAYS,
    ShardMeta,
    ensure_format,
)


@dataclass
class SnapshotShard:
    """One (scene, run) of snapshot data, arrays memory-mapped."""

    path: Path
    meta: Dict
    images: np.ndarray
    c2w: np.ndarray
    intrinsics: np.ndarray
    input_indices: np.ndarray
    steps: np.ndarray
    renders: np.ndarray
    masks: Optional[np.ndarray] = None
    render_latents: Optional[np.ndarray] = None
    depths: Optional[np.ndarray] = None

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def info(self) -> ShardMeta:
        """``meta`` as a :class:`ShardMeta` (unknown keys dropped, missing ones at their defaults)."""
        return ShardMeta.from_dict(self.meta)


def load_shard(path: Path) -> SnapshotShard:
    """Read a shard directory; raises ValueError naming the file when something is missing or inconsistent."""
    path = Path(path)
    meta = _read_meta(path / "meta.json")
    arrays = _load_arrays(path)
    _check_shapes(path, arrays)
    return SnapshotShard(path=path, meta=meta, **arrays)


def _read_meta(meta_file: Path) -> Dict:
    """``meta.json`` of a finished shard of this format version."""
    if not meta_file.exists():
        raise ValueError(f"{meta_file}: missing (unfinished or not a snapshot shard)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_file}: invalid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_file}: format_version {version!r}, expected {FORMAT_VERSION}")
    return meta


def _load_arrays(path: Path) -> Dict[str, np.ndarray]:
    """Every required and present optional array of a shard, memory-mapped."""
    arrays = {}
    for key in REQUIRED_ARRAYS + OPTIONAL_ARRAYS:
        f = path / f"{key}.npy"
        if not f.exists():
            if key in REQUIRED_ARRAYS:
                raise ValueError(f"{f}: missing array {key!r}")
            continue
        try:
            arrays[key] = np.load(f, mmap_mode="r")
        except (ValueError, OSError) as err:
            raise ValueError(f"{f}: unreadable ({err})") from err
    return arrays


def _check_shapes(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """The arrays agree with each other (frames, snapshot steps, image size); ValueError naming the first that
    does not."""
    num_frames = arrays["images"].shape[0]
    checks = {
        "c2w": (num_frames, 3, 4),
        "intrinsics": (num_frames, 4),
    }
    for key, shape in checks.items():
        if tuple(arrays[key].shape) != shape:
            raise ValueError(f"{path / (key + '.npy')}: shape {tuple(arrays[key].shape)}, expected {shape}")
    renders = arrays["renders"]
    if renders.ndim != 5 or renders.shape[0] != len(arrays["steps"]) or renders.shape[1:] != arrays["images"].shape:
        raise ValueError(
            f"{path / 'renders.npy'}: shape {tuple(renders.shape)}, expected "
            f"({len(arrays['steps'])}, {', '.join(map(str, arrays['images'].shape))})"
        )
    inputs = np.asarray(arrays["input_indices"])
    if inputs.ndim != 1 or (inputs.size and (inputs.min() < 0 or inputs.max() >= num_frames)):
        raise ValueError(f"{path / 'input_indices.npy'}: expected frame indices in [0, {num_frames - 1}], got {inputs}")
    masks = arrays.get("masks")
    if masks is not None and tuple(masks.shape) != tuple(arrays["images"].shape[:3]):
        raise ValueError(
            f"{path / 'masks.npy'}: shape {tuple(masks.shape)}, expected {tuple(arrays['images'].shape[:3])}"
        )
    latents = arrays.get("render_latents")
    if latents is not None and (latents.ndim != 5 or tuple(latents.shape[:2]) != tuple(renders.shape[:2])):
        raise ValueError(
            f"{path / 'render_latents.npy'}: shape {tuple(latents.shape)}, expected ({renders.shape[0]}, "
            f"{renders.shape[1]}, C, h, w)"
        )
    depths = arrays.get("depths")
    if depths is not None and tuple(depths.shape) != tuple(renders.shape[:4]):
        raise ValueError(f"{path / 'depths.npy'}: shape {tuple(depths.shape)}, expected {tuple(renders.shape[:4])}")


@dataclass
class ShardSummary:
    """One line of `itergen snapshots-summary`; ``bytes`` is the shard's size on disk."""

    name: str
    scene: str
    frames: int
    snapshots: int
    bytes: int
    meta: Dict = field(default_factory=dict)


def list_shards(root: Path, strict: bool = False) -> List[Path]:
    """Finished shard directories under ``root``, sorted by name; corrupt ones are skipped with a warning."""
    root = Path(root)
    fmt = root / "format.json"
    if not fmt.exists():
        raise FileNotFoundError(f"{fmt}: missing; {root} is not a snapshot directory (run `itergen export-snapshots`)")
    ensure_format(root)
    found = []
    shards = root / "shards"
    for p in sorted(shards.iterdir()) if shards.exists() else []:
        if p.name.startswith(".") or not p.is_dir():
            continue
        problem = _shard_problem(p)
        if problem is not None:
            msg = f"{p}: {problem}; skipping this shard"
            if strict:
                raise ValueError(msg)
            warnings.warn(msg)
            continue
        found.append(p)
    return found


def _shard_problem(path: Path) -> Optional[str]:
    """Why ``path`` is not a usable finished shard (cheap checks: meta.json and required files), or None."""
    meta_file = path / "meta.json"
    if not meta_file.exists():
        return "no meta.json (unfinished or not a snapshot shard)"
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"meta.json is not valid JSON ({err})"
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        return f"meta.json has format_version {version!r}, expected {FORMAT_VERSION}"
    missing = [f"{k}.npy" for k in REQUIRED_ARRAYS if not (path / f"{k}.npy").is_file()]
    if missing:
        return f"missing {', '.join(missing)}"
    return None


def summarize(root: Path) -> List[ShardSummary]:
    """Per-shard summary (for `itergen snapshots-summary`)."""
    out = []
    for p in list_shards(root):
        meta = json.loads((p / "meta.json").read_text())
        info = ShardMeta.from_dict(meta)
        out.append(
            ShardSummary(
                name=p.name,
                scene=info.scene,
                frames=info.num_frames,
                snapshots=len(info.steps),
                bytes=sum(f.stat().st_size for f in p.iterdir() if f.is_file()),
                meta=meta,
            )
        )
    return out
