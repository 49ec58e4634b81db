"""CO3D v2 on-disk layout: find the category folder, read the gzipped annotations and set lists.

Everything here is plain Python/numpy (no nerfstudio), so it is cheap to import and easy to test. All errors are
one-line ``CO3DDataError`` messages that name the path or field and say what was expected.
"""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

FRAME_ANNOTATIONS = "frame_annotations.jgz"
SEQUENCE_ANNOTATIONS = "sequence_annotations.jgz"
SET_LISTS_DIR = "set_lists"
INTRINSICS_FORMATS = ("ndc_isotropic", "ndc_norm_image_bounds")
DEFAULT_INTRINSICS_FORMAT = "ndc_norm_image_bounds"
"""CO3D v1 annotations carry no ``intrinsics_format``; they are in this format."""


class CO3DDataError(ValueError):
    """A CO3D folder or annotation is not what the parser expects (message is a single line)."""


@dataclass(frozen=True)
class CO3DLayout:
    """Where one sequence lives: ``root/category/sequence``; annotation paths are relative to ``root``."""

    root: Path
    category_dir: Path
    sequence_dir: Path
    sequence_name: str

    @property
    def frame_annotations(self) -> Path:
        return self.category_dir / FRAME_ANNOTATIONS

    @property
    def sequence_annotations(self) -> Path:
        return self.category_dir / SEQUENCE_ANNOTATIONS


@dataclass
class CO3DFrame:
    """One annotated frame, geometry kept exactly as stored (PyTorch3D row-vector R, T; NDC intrinsics)."""

    frame_number: int
    image_path: Path
    mask_path: Optional[Path]
    height: int
    width: int
    R: np.ndarray  # [3, 3], X_cam = X_world @ R + T
    T: np.ndarray  # [3]
    focal_length: np.ndarray  # [2] NDC
    principal_point: np.ndarray  # [2] NDC
    intrinsics_format: str


def is_co3d_sequence(path: Path) -> bool:
    """True when ``path`` is a CO3D sequence folder: it has ``images/`` and its parent (the category folder) holds
    ``frame_annotations.jgz`` (so ``<category>/set_lists`` and other siblings are not sequences)."""
    path = Path(path)
    return path.is_dir() and (path / "images").is_dir() and (path.parent / FRAME_ANNOTATIONS).is_file()


def resolve_layout(data: Path, sequence_name: Optional[str] = None) -> CO3DLayout:
    """Map ``--data`` (a sequence folder, or a category folder plus ``sequence_name``) to a ``CO3DLayout``."""
    data = Path(data).expanduser().absolute()
    expected = "expected a CO3D sequence folder <root>/<category>/<sequence> with <category>/" + FRAME_ANNOTATIONS
    if not data.is_dir():
        raise CO3DDataError(f"CO3D data path {data} is not a directory; {expected}")
    if (data / FRAME_ANNOTATIONS).is_file():  # a category folder
        if not sequence_name:
            raise CO3DDataError(
                f"{data} is a CO3D category folder; point --data at one of its sequence folders or set sequence_name"
            )
        category_dir, seq_dir = data, data / sequence_name
    elif (data.parent / FRAME_ANNOTATIONS).is_file():
        category_dir, seq_dir = data.parent, data
        if sequence_name and sequence_name != data.name:
            raise CO3DDataError(f"sequence_name={sequence_name!r} disagrees with the sequence folder {data}")
    elif (data / "images").is_dir():  # looks like a sequence, but its category lacks the annotations
        raise CO3DDataError(f"missing annotation file {data.parent / FRAME_ANNOTATIONS}; {expected}")
    else:
        raise CO3DDataError(f"{data} is not a CO3D sequence folder; {expected}")
    return CO3DLayout(
        root=category_dir.parent, category_dir=category_dir, sequence_dir=seq_dir, sequence_name=seq_dir.name
    )


def _read_jgz(path: Path) -> list:
    if not path.is_file():
        raise CO3DDataError(f"missing annotation file {path}")
    try:
        with gzip.open(path, "rt", encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise CO3DDataError(f"cannot read {path} as gzipped JSON ({type(err).__name__}: {err})") from err
    if not isinstance(data, list):
        raise CO3DDataError(f"{path} holds a {type(data).__name__}; expected a JSON list of frame dicts")
    return data


@lru_cache(maxsize=2)
def _records_by_sequence(path_str: str, mtime_ns: int, size: int) -> Dict[str, str]:
    """Records of every sequence of one annotation file, as JSON text per sequence.

    A category file holds ~10^5 frames and takes seconds to parse, so it is read once per process (per file version)
    and kept compactly; the few hundred records of one sequence are re-parsed from text on request.
    """
    del mtime_ns, size  # cache-key only
    groups: Dict[str, list] = defaultdict(list)
    for record in _read_jgz(Path(path_str)):
        if isinstance(record, dict):
            groups[str(record.get("sequence_name"))].append(record)
    return {name: json.dumps(records) for name, records in groups.items()}


def sequence_records(path: Path, sequence_name: str) -> List[dict]:
    """Raw annotation dicts of one sequence of ``frame_annotations.jgz`` (error naming the file if absent)."""
    if not path.is_file():
        raise CO3DDataError(f"missing annotation file {path}")
    stat = os.stat(path)
    groups = _records_by_sequence(str(path), stat.st_mtime_ns, stat.st_size)
    if sequence_name not in groups:
        names = sorted(groups)
        example = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
        raise CO3DDataError(
            f"sequence {sequence_name!r} is not in {path} ({len(names)} sequences there, e.g. {example or 'none'})"
        )
    return json.loads(groups[sequence_name])


def clear_cache() -> None:
    """Forget annotation files read so far (they are cached per path, modification time and size)."""
    _records_by_sequence.cache_clear()


def _field(record: dict, dotted: str, where: str):
    value = record
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value or value[key] is None:
            raise CO3DDataError(f"{where}: missing field '{dotted}'")
        value = value[key]
    return value


def _array(record: dict, dotted: str, shape: Tuple[int, ...], where: str) -> np.ndarray:
    raw = _field(record, dotted, where)
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise CO3DDataError(f"{where}: field '{dotted}' is not numeric") from err
    if arr.shape != shape:
        raise CO3DDataError(f"{where}: field '{dotted}' has shape {list(arr.shape)}; expected {list(shape)}")
    if not np.isfinite(arr).all():
        raise CO3DDataError(f"{where}: field '{dotted}' holds non-finite values {arr.tolist()}")
    return arr


def parse_frame(record: dict, root: Path, source: Path) -> CO3DFrame:
    """Validate one annotation dict and turn it into a ``CO3DFrame`` with absolute file paths."""
    where = f"frame {record.get('frame_number')} of sequence {record.get('sequence_name')!r} in {source}"
    size = _array(record, "image.size", (2,), where)  # stored as [H, W]
    fmt = record.get("viewpoint", {}).get("intrinsics_format") or DEFAULT_INTRINSICS_FORMAT
    if fmt not in INTRINSICS_FORMATS:
        raise CO3DDataError(
            f"{where}: viewpoint.intrinsics_format={fmt!r}; expected one of {', '.join(INTRINSICS_FORMATS)}"
        )
    mask = record.get("mask") or {}
    if size.min() < 1 or (size != np.round(size)).any():
        raise CO3DDataError(f"{where}: field 'image.size' is {size.tolist()}; expected [H, W] in whole pixels >= 1")
    focal = _array(record, "viewpoint.focal_length", (2,), where)
    if focal.min() <= 0:
        raise CO3DDataError(f"{where}: field 'viewpoint.focal_length' is {focal.tolist()}; expected values > 0")
    return CO3DFrame(
        frame_number=int(_field(record, "frame_number", where)),
        image_path=root / str(_field(record, "image.path", where)),
        mask_path=root / mask["path"] if mask.get("path") else None,
        height=int(size[0]),
        width=int(size[1]),
        R=_array(record, "viewpoint.R", (3, 3), where),
        T=_array(record, "viewpoint.T", (3,), where),
        focal_length=focal,
        principal_point=_array(record, "viewpoint.principal_point", (2,), where),
        intrinsics_format=fmt,
    )


def load_sequence_frames(layout: CO3DLayout) -> List[CO3DFrame]:
    """All annotated frames of the layout's sequence, sorted by frame number (duplicates are an error)."""
    path = layout.frame_annotations
    records = sequence_records(path, layout.sequence_name)
    frames = sorted((parse_frame(r, layout.root, path) for r in records), key=lambda f: f.frame_number)
    dupes = sorted(n for n, c in Counter(f.frame_number for f in frames).items() if c > 1)
    if dupes:
        raise CO3DDataError(f"sequence {layout.sequence_name!r} in {path} repeats frame numbers {dupes[:10]}")
    return frames


def load_sequence_annotation(layout: CO3DLayout) -> Optional[dict]:
    """The sequence's entry of ``sequence_annotations.jgz``, or None when the file or the entry is absent."""
    path = layout.sequence_annotations
    if not path.is_file():
        return None
    for record in _read_jgz(path):
        if isinstance(record, dict) and record.get("sequence_name") == layout.sequence_name:
            return record
    return None


def set_list_path(category_dir: Path, name: str) -> Path:
    """``fewview_dev`` -> ``<category>/set_lists/set_lists_fewview_dev.json``; a ``*.json`` name is used as is."""
    if name.endswith(".json"):
        candidate = Path(name)
        return candidate if candidate.is_absolute() else category_dir / SET_LISTS_DIR / name
    return category_dir / SET_LISTS_DIR / f"set_lists_{name}.json"


def load_set_list(category_dir: Path, name: str, sequence_name: str) -> Dict[str, List[int]]:
    """Frame numbers of ``sequence_name`` per subset (``train``/``val``/``test``) of a CO3D set list.

    Format: ``{"train": [[sequence_name, frame_number, image_path], ...], "val": [...], "test": [...]}``.
    """
    path = set_list_path(category_dir, name)
    if not path.is_file():
        available = sorted(p.name for p in (category_dir / SET_LISTS_DIR).glob("*.json"))
        raise CO3DDataError(f"missing set list {path}; available: {', '.join(available) or 'none'}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise CO3DDataError(f"cannot parse set list {path} as JSON ({err})") from err
    if not isinstance(data, dict):
        raise CO3DDataError(f"set list {path} holds a {type(data).__name__}; expected a dict of subsets")
    subsets: Dict[str, List[int]] = {}
    for subset, entries in data.items():
        try:
            subsets[subset] = sorted({int(e[1]) for e in entries if e[0] == sequence_name})
        except (TypeError, ValueError, IndexError) as err:
            raise CO3DDataError(
                f"set list {path}: subset {subset!r} entries must be [sequence_name, frame_number, image_path]"
            ) from err
    if not any(subsets.values()):
        raise CO3DDataError(f"sequence {sequence_name!r} has no frames in set list {path}")
    return subsets


def frame_numbers_to_positions(frames: Sequence[CO3DFrame], numbers: Sequence[int], what: str) -> List[int]:
    """Positions (in ``frames``) of the given CO3D frame numbers; unknown numbers are an error naming ``what``."""
    position = {f.frame_number: i for i, f in enumerate(frames)}
    missing = [int(n) for n in numbers if int(n) not in position]
    if missing:
        raise CO3DDataError(f"{what}: frame numbers {missing[:10]} are not among the sequence's usable frames")
    return sorted({position[int(n)] for n in numbers})
