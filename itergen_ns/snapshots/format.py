"""On-disk format of snapshot data (docs/architecture.md, "Snapshots"): the one reader/writer shared by the exporter and the trainer.

Layout of a snapshot root::

    ROOT/format.json                    {"format": "itergen-snapshots", "version": 1}
    ROOT/shards/<name>/meta.json        scene, run, seed, sizes, steps ... (written last)
    ROOT/shards/<name>/images.npy       uint8   [F, H, W, 3]  ground-truth frames
    ROOT/shards/<name>/c2w.npy          float32 [F, 3, 4]     nerfstudio OpenGL camera-to-world
    ROOT/shards/<name>/intrinsics.npy   float32 [F, 4]        fx, fy, cx, cy in pixels of (H, W)
    ROOT/shards/<name>/input_indices.npy int64  [C]           frames the splatfacto run trained on
    ROOT/shards/<name>/steps.npy        int64   [S]           snapshot steps
    ROOT/shards/<name>/renders.npy      uint8   [S, F, H, W, 3] renders of the run at every frame
    ROOT/shards/<name>/masks.npy        uint8   [F, H, W]     optional foreground masks (255 = object)
    ROOT/shards/<name>/render_latents.npy float16 [S, F, 4, h, w] optional VAE latents of the renders
    ROOT/shards/<name>/depths.npy       float16 [S, F, H, W]  optional render depth (view-axis distance; 0 = no
                                                              surface: accumulated opacity < 0.5)

A shard directory is assembled under a hidden temporary name and renamed into place, so a shard either
exists whole or not at all; ``.npy`` files are memory-mapped when read so large shards stay cheap. The writer
holds an advisory lock (flock) on its temporary directory until it is done, so cleaning up after a killed
export never deletes the temporary of a writer that is still running (the kernel drops a dead process's lock).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

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

    Used to project the size of an export before running it; the dtypes are the ones documented above.
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
        self.keys: set = set()
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
        np.save(self.tmp / f"{key}.npy", np.ascontiguousarray(arr))
        self.nbytes += arr.nbytes
        self.keys.add(key)

    def open(self, key: str, shape, dtype) -> np.ndarray:
        """A writable memory-mapped array stored as ``key.npy``."""
        arr = np.lib.format.open_memmap(self.tmp / f"{key}.npy", mode="w+", dtype=dtype, shape=tuple(shape))
        self.nbytes += arr.nbytes
        self.keys.add(key)
        return arr

    def commit(self, meta: Union[ShardMeta, Dict]) -> Path:
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
    meta_file = path / "meta.json"
    if not meta_file.exists():
        raise ValueError(f"{meta_file}: missing (unfinished or not a snapshot shard)")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{meta_file}: invalid JSON ({err})") from err
    if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
        version = meta.get("format_version") if isinstance(meta, dict) else None
        raise ValueError(f"{meta_file}: format_version {version!r}, expected {FORMAT_VERSION}")
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
    return SnapshotShard(path=path, meta=meta, **arrays)


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
