"""On-disk format of snapshot data (DESIGN §6): the one reader/writer shared by the exporter and the trainer.

Layout of a snapshot root::

    ROOT/format.json                    {"format": "itergen-snapshots", "version": 1}
    ROOT/shards/<name>/meta.json        scene, run, seed, sizes, steps ... (written last)
    ROOT/shards/<name>/images.npy       uint8   [F, H, W, 3]  ground-truth frames
    ROOT/shards/<name>/c2w.npy          float32 [F, 3, 4]     nerfstudio OpenGL camera-to-world
    ROOT/shards/<name>/intrinsics.npy   float32 [F, 4]        fx, fy, cx, cy in pixels of (H, W)
    ROOT/shards/<name>/input_indices.npy int64  [C]           frames the splatfacto run trained on
    ROOT/shards/<name>/steps.npy        int64   [S]           snapshot steps
    ROOT/shards/<name>/renders.npy      uint8   [S, F, H, W, 3] renders of the run at every frame
    ROOT/shards/<name>/masks.npy        uint8   [F, H, W]     optional foreground masks
    ROOT/shards/<name>/render_latents.npy float16 [S, F, 4, h, w] optional VAE latents of the renders

A shard directory is assembled under a hidden temporary name and renamed into place, so a shard either
exists whole or not at all; ``.npy`` files are memory-mapped when read so large shards stay cheap.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

FORMAT_NAME = "itergen-snapshots"
FORMAT_VERSION = 1
REQUIRED_ARRAYS = ("images", "c2w", "intrinsics", "input_indices", "steps", "renders")
OPTIONAL_ARRAYS = ("masks", "render_latents")


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


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
    atomic_write_text(fmt, json.dumps({"format": FORMAT_NAME, "version": FORMAT_VERSION}, indent=2))


def shard_dir(root: Path, name: str) -> Path:
    return Path(root) / "shards" / name


def shard_exists(root: Path, name: str) -> bool:
    """A shard is finished when its directory holds meta.json (the rename makes that atomic)."""
    return (shard_dir(root, name) / "meta.json").exists()


def write_shard(root: Path, name: str, arrays: Dict[str, np.ndarray], meta: Dict) -> Path:
    """Write one shard atomically: everything goes to a hidden temp dir that is renamed into place."""
    missing = [k for k in REQUIRED_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"write_shard({name}): missing arrays {missing}")
    ensure_format(root)
    final = shard_dir(root, name)
    if final.exists():
        raise FileExistsError(f"{final} already exists")
    tmp = final.parent / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    try:
        nbytes = 0
        for key, arr in arrays.items():
            if arr is None:
                continue
            np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
            nbytes += arr.nbytes
        meta = dict(meta, format_version=FORMAT_VERSION, name=name, bytes=int(nbytes))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def remove_stale_temporaries(root: Path) -> int:
    """Delete half-written shard dirs left by a killed export; returns how many were removed."""
    shards = Path(root) / "shards"
    if not shards.exists():
        return 0
    stale = [p for p in shards.iterdir() if p.name.startswith(".tmp-")]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return len(stale)


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

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])


def load_shard(path: Path) -> SnapshotShard:
    """Read a shard directory; raises ValueError naming the file when something is missing or inconsistent."""
    path = Path(path)
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise ValueError(f"{meta_file}: missing (unfinished or not a snapshot shard)")
    try:
        meta = json.loads(meta_file.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{meta_file}: invalid JSON ({err})") from err
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format_version {meta.get('format_version')!r}, expected {FORMAT_VERSION}")
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
    return SnapshotShard(path=path, meta=meta, **arrays)


@dataclass
class ShardSummary:
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
        if p.name.startswith("."):
            continue
        if not (p / "meta.json").exists():
            msg = f"{p}: no meta.json, skipping an unfinished shard"
            if strict:
                raise ValueError(msg)
            warnings.warn(msg)
            continue
        found.append(p)
    return found


def summarize(root: Path) -> List[ShardSummary]:
    """Per-shard summary (for `itergen snapshots-summary`)."""
    out = []
    for p in list_shards(root):
        meta = json.loads((p / "meta.json").read_text())
        out.append(
            ShardSummary(
                name=p.name,
                scene=str(meta.get("scene", "?")),
                frames=int(meta.get("num_frames", 0)),
                snapshots=len(meta.get("steps", [])),
                bytes=int(meta.get("bytes", 0)),
                meta=meta,
            )
        )
    return out
