"""Per-frame image work for CO3D: soft-mask loading, background compositing, square crops, atomic cache writes.

Processed files are written once into a cache folder and reused; every write goes to a temporary file in the same
folder followed by ``os.replace``, so concurrent or interrupted runs never leave a half-written image behind.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, TypeVar

import numpy as np
from PIL import Image

from itergen_ns.io import atomic_write, atomic_write_text

BACKGROUND_COLORS = {"white": (255, 255, 255), "black": (0, 0, 0)}
CACHE_VERSION = 1
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True)
class CropBox:
    """Square window ``[x0, x0 + side) x [y0, y0 + side)`` in source pixels, resized to ``out_size`` x ``out_size``."""

    x0: int
    y0: int
    side: int
    out_size: int

    @property
    def zoom(self) -> float:
        return self.out_size / self.side


def square_crop_box(
    center_xy: Tuple[float, float], side: int, width: int, height: int, out_size: Optional[int] = None
) -> CropBox:
    """Square window of ``side`` px centred on ``center_xy``, shrunk to fit the image and shifted inside it."""
    side = int(max(1, min(side, width, height)))
    x0 = int(round(center_xy[0] - side / 2.0))
    y0 = int(round(center_xy[1] - side / 2.0))
    x0 = min(max(x0, 0), width - side)
    y0 = min(max(y0, 0), height - side)
    return CropBox(x0=x0, y0=y0, side=side, out_size=int(out_size or side))


def crop_intrinsics(intrinsics: np.ndarray, box: CropBox) -> np.ndarray:
    """``(fx, fy, cx, cy)`` of the cropped-and-resized image (continuous pixel coordinates scale exactly)."""
    fx, fy, cx, cy = intrinsics
    z = box.zoom
    return np.array([fx * z, fy * z, (cx - box.x0) * z, (cy - box.y0) * z], dtype=np.float64)


def load_soft_mask(path: Path, size_wh: Tuple[int, int]) -> np.ndarray:
    """CO3D mask as float32 in [0, 1] with shape [H, W]; a size mismatch with its image is an error."""
    with Image.open(path) as img:
        arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    if (arr.shape[1], arr.shape[0]) != tuple(size_wh):
        raise ValueError(f"mask {path} is {arr.shape[1]}x{arr.shape[0]}; expected {size_wh[0]}x{size_wh[1]} (W x H)")
    return arr


def mask_bbox_center(mask: np.ndarray, threshold: float) -> Optional[Tuple[float, float]]:
    """Centre ``(x, y)`` of the bounding box of ``mask >= threshold`` in continuous pixels; None if empty."""
    ys, xs = np.nonzero(mask >= threshold)
    if xs.size == 0:
        return None
    return (float(xs.min() + xs.max() + 1) / 2.0, float(ys.min() + ys.max() + 1) / 2.0)


def composite(image: np.ndarray, alpha: np.ndarray, color: Tuple[int, int, int]) -> np.ndarray:
    """``alpha * image + (1 - alpha) * color`` for uint8 RGB ``image`` and soft ``alpha`` [H, W] in [0, 1]."""
    bg = np.asarray(color, dtype=np.float32)
    out = image.astype(np.float32) * alpha[..., None] + bg * (1.0 - alpha[..., None])
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def apply_crop(array: np.ndarray, box: CropBox, resample: Image.Resampling) -> np.ndarray:
    """Cut ``box`` out of an [H, W(, C)] uint8 array and resize it to ``box.out_size``."""
    window = array[box.y0 : box.y0 + box.side, box.x0 : box.x0 + box.side]
    if box.out_size == box.side:
        return np.ascontiguousarray(window)
    img = Image.fromarray(window).resize((box.out_size, box.out_size), resample=resample)
    return np.asarray(img)


def write_png_atomic(array: np.ndarray, path: Path) -> None:
    """Write ``array`` as PNG, atomically (:mod:`itergen_ns.io`)."""
    atomic_write(path, lambda f: Image.fromarray(array).save(f, format="PNG"))


def is_writable_dir(path: Path) -> bool:
    """True when ``path`` is a directory this process may write and whose mode has a write bit (a folder marked
    ``r-x`` is treated as read-only even for root)."""
    try:
        return os.access(path, os.W_OK) and bool(os.stat(path).st_mode & 0o222)
    except OSError:
        return False


def cache_folder(sequence_dir: Path, settings: dict, override: Optional[Path] = None) -> Path:
    """Cache folder for processed frames: ``<sequence>/.itergen_cache/<hash of settings>``.

    Falls back to the system temp folder when the sequence folder is not writable, or is marked read-only (no
    write permission bit, e.g. a shared data set: root may write anyway, but should not).
    """
    blob = json.dumps({"version": CACHE_VERSION, **settings}, sort_keys=True)
    tag = hashlib.sha1(blob.encode("utf-8")).hexdigest()[:12]
    if override is not None:
        base = Path(override)
    elif is_writable_dir(sequence_dir):
        base = sequence_dir / ".itergen_cache"
    else:
        where = hashlib.sha1(str(Path(sequence_dir).absolute()).encode("utf-8")).hexdigest()[:8]
        base = (
            Path(tempfile.gettempdir())
            / "itergen_co3d_cache"
            / f"{sequence_dir.parent.name}_{sequence_dir.name}_{where}"
        )
    folder = base / tag
    folder.mkdir(parents=True, exist_ok=True)
    settings_file = folder / "settings.json"
    if not settings_file.exists():
        atomic_write_text(settings_file, blob)
    return folder


def parallel_map(fn: Callable[[_T], _R], items: Sequence[_T], workers: int) -> List[_R]:
    """``[fn(x) for x in items]`` on a small thread pool (PIL decoding/encoding releases the GIL)."""
    if workers <= 1 or len(items) <= 1:
        return [fn(x) for x in items]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(fn, items))
