"""nerfstudio-format scenes in the sparse-view setting: train = N chosen input views, val/test = the other frames.

nerfstudio's parser reads every frame (``eval_mode="all"``) *without* its own orientation, centring and scaling
(``auto_orient_and_center_poses`` and ``auto_scale_poses`` would use all frames, held-out ones included). The
project's normalisation (``itergen_ns/data/normalization.py``) is then computed from the input views only and
applied to every frame, so all splits share one coordinate frame and that frame does not depend on the held-out
cameras. ``split="all"`` gives every frame. Frame indices are positions in nerfstudio's sorted frame list.

Before anything is parsed, ``check_transforms`` validates the scene: listed image (and mask) files exist, poses
are finite 4x4 (or 3x4) matrices, intrinsics are finite with focal lengths > 0 and the principal point inside the
image, every image's stored size is its camera's ``w`` x ``h``, and no image carries an EXIF rotation; each problem
is a one-line ValueError / FileNotFoundError naming the file and the field.

Framing (``frame_size``): every frame is framed by ``itergen_ns.data.framing`` (centred square crop resized to
``frame_size``), the one framing the CO3D parser, the exporter, the eval harness and the generator share; framed
images are PNGs cached under ``<scene>/.itergen_cache/<settings hash>/`` (or the temp folder when the scene folder is
read-only), intrinsics transform exactly. ``None`` (default) keeps the full frames.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Literal, Optional, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig

from itergen_ns.data import framing
from itergen_ns.data.image_checks import (
    InputDataError,
    check_finite_pose,
    check_image_size,
    check_intrinsics,
    check_rigid_pose,
)
from itergen_ns.data.normalization import Normalization, compute_normalization
from itergen_ns.data.splits import SparseSplitConfig, select_input_views


@dataclass
class SparseNerfstudioDataParserConfig(NerfstudioDataParserConfig, SparseSplitConfig):
    """nerfstudio dataparser whose train split is the sparse input views and whose eval split is the rest."""

    _target: Type = field(default_factory=lambda: SparseNerfstudio)
    eval_mode: Literal["fraction", "filename", "interval", "all"] = "all"
    """Ignored: the split comes from num_input_views / input_view_seed / input_views."""
    use_masks: bool = False
    """Pass the frames' mask_path files on (nerfstudio then ignores pixels outside the masks in the loss)."""
    center_method: Literal["axes", "none"] = "axes"  # type: ignore[assignment]
    """Scene centre: the point nearest to the input cameras' axes (one input: on its axis), or keep the origin."""
    orient: bool = True
    """Rotate the normal of the input cameras' orbit plane (1-2 inputs: their up vector) to +z."""
    camera_radius: Optional[float] = 1.0
    """Scale so the median input-camera distance to the centre is this; None keeps the dataset's scale."""
    orientation_method: Literal["pca", "up", "vertical", "none"] = "none"
    """Ignored: orientation comes from the input views (orient)."""
    auto_scale_poses: bool = False
    """Ignored: scale comes from the input views (camera_radius)."""
    scale_factor: float = 1.0
    """Ignored: scale comes from the input views (camera_radius)."""
    load_3D_points: bool = False
    """Pass the dataset's ply_file_path points as initial Gaussians. A structure-from-motion reconstruction from ALL
    frames: it leaks held-out geometry, not for evaluation."""
    frame_size: Optional[int] = None
    """The shared framing (``itergen_ns.data.framing``): each frame's centred square crop resized to this side, as
    the CO3D parser does (its default is 256). None (or 0): full frames."""
    cache_dir: Optional[Path] = None
    """Where framed images go (default ``<scene>/.itergen_cache``, or the temp folder if that is read-only)."""


_INTRINSIC_FIELDS = ("fl_x", "fl_y", "cx", "cy")


def _frame_intrinsics(meta: dict, frame: dict, path: Path, i: int) -> tuple:
    """(fl_x, fl_y, cx, cy, w, h) of frames[i] (per-frame values override top-level ones), checked to be numbers."""
    values = []
    for key in _INTRINSIC_FIELDS + ("w", "h"):
        source = frame if key in frame else meta
        if key not in source:
            raise ValueError(f"{path}: frames[{i}] has no '{key}' and there is no top-level '{key}'")
        value = source[key]
        where = f"frames[{i}].{key}" if source is frame else f"top-level '{key}'"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{path}: {where} is {value!r}; expected a number")
        if key in ("w", "h") and (not math.isfinite(value) or value != int(value) or value < 1):
            raise ValueError(f"{path}: {where} is {value!r}; expected a positive whole number of pixels")
        values.append(value)
    return tuple(values)


def check_transforms(data: Path, check_masks: bool = True, check_images: bool = True) -> Path:
    """Validate a nerfstudio dataset before parsing; return the transforms.json path.

    Raises FileNotFoundError for a missing transforms.json / image / mask file and ValueError for malformed
    JSON or frames, non-finite poses or intrinsics, a principal point outside the image and (``check_images``) an
    image whose stored size is not its camera's w x h or that carries an EXIF rotation, naming the file and field.
    """
    path = data if data.suffix == ".json" else data / "transforms.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transforms.json not found (expected a nerfstudio-format scene folder)")
    try:
        meta = json.loads(path.read_text())  # Python's json reads NaN / Infinity: caught below
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not isinstance(frames, list) or not frames:
        raise ValueError(f"{path}: expected a non-empty 'frames' list")
    for key in ("train_filenames", "val_filenames", "test_filenames"):
        if key in meta:
            raise ValueError(f"{path}: '{key}' fixes the split, but the sparse-view parser chooses it; remove it")
    if "orientation_override" in meta:
        raise ValueError(
            f"{path}: 'orientation_override' orients the scene from all frames (held-out ones too); the sparse-view "
            "parser orients from the input views; remove it"
        )
    root = path.parent
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise ValueError(f"{path}: frames[{i}] needs 'file_path' and 'transform_matrix'")
        mat = frame["transform_matrix"]
        if not (isinstance(mat, list) and len(mat) in (3, 4) and all(isinstance(r, list) and len(r) == 4 for r in mat)):
            raise ValueError(f"{path}: frames[{i}].transform_matrix must be a 4x4 (or 3x4) nested list")
        check_finite_pose(mat, f"{path}: frames[{i}] ({frame['file_path']})", "transform_matrix")
        check_rigid_pose(mat, f"{path}: frames[{i}] ({frame['file_path']})", "transform_matrix")
        for key in ("file_path", "mask_path") if check_masks else ("file_path",):
            if key in frame and not (root / frame[key]).is_file():
                raise FileNotFoundError(f"{root / frame[key]}: file of frames[{i}].{key} in {path} not found")
        fx, fy, cx, cy, w, h = _frame_intrinsics(meta, frame, path, i)
        check_intrinsics(fx, fy, cx, cy, w, h, f"{path}: frames[{i}] ({frame['file_path']})", _INTRINSIC_FIELDS)
        if check_images:
            fields = "w, h" + ("" if "w" in frame or "h" in frame else " (top level)")
            check_image_size(  # undecodable files are named by the datamanager's / exporter's own checks
                root / frame["file_path"], w, h, f"{path} {fields}", f"frames[{i}].file_path", unreadable="skip"
            )
    return path


@dataclass
class SparseNerfstudio(DataParser):
    """Sparse-view split of a nerfstudio dataset (see module docstring)."""

    config: SparseNerfstudioDataParserConfig

    def __init__(self, config: SparseNerfstudioDataParserConfig):
        super().__init__(config=config)
        self._full: Optional[DataparserOutputs] = None

    def full_outputs(self) -> DataparserOutputs:
        """All frames in the normalisation computed from the input views (cached)."""
        if self._full is None:
            check_transforms(self.config.data, check_masks=self.config.use_masks)
            if self.config.frame_size is not None and self.config.frame_size < 0:
                raise ValueError(f"frame_size={self.config.frame_size}; expected a side in pixels, or None / 0")
            raw_config = replace(
                self.config,
                eval_mode="all",
                orientation_method="none",
                center_method="none",
                auto_scale_poses=False,
                scale_factor=1.0,
                _target=Nerfstudio,
            )
            full = Nerfstudio(raw_config).get_dataparser_outputs(split="train")
            train_idx, _ = self._select(len(full.image_filenames))
            raw_c2w = full.cameras.camera_to_worlds
            norm = self.normalization(raw_c2w[torch.tensor(train_idx, dtype=torch.long)])
            full.cameras.camera_to_worlds = norm.apply_to_poses(raw_c2w).to(raw_c2w.dtype)
            if "points3D_xyz" in full.metadata:  # only with the explicit load_3D_points leak flag
                full.metadata["points3D_xyz"] = norm.apply_to_points(full.metadata["points3D_xyz"]).float()
            total = norm.after(full.dataparser_transform, full.dataparser_scale)
            full.dataparser_transform, full.dataparser_scale = total.transform.float(), total.scale
            if self.config.frame_size:
                full = self._framed(full, int(self.config.frame_size))
            self._full = full
        return self._full

    def _framed(self, full: DataparserOutputs, size: int) -> DataparserOutputs:
        """Every frame (and mask) through the shared framing, written once into the cache; cameras to match."""
        from itergen_ns.data.co3d import images as img  # cache folder + atomic PNG writes, shared with CO3D

        cfg = self.config
        data = cfg.data.parent if cfg.data.suffix == ".json" else cfg.data
        cameras = full.cameras
        if not torch.all(cameras.camera_type == CameraType.PERSPECTIVE.value):
            raise ValueError(f"{data}: frame_size needs perspective cameras (camera_model PINHOLE / OPENCV)")
        if full.metadata.get("depth_filenames"):
            raise ValueError(f"{data}: frame_size does not frame depth maps (depth_file_path); set frame_size None")
        cache = img.cache_folder(data, {"kind": "nerfstudio", "frame": "centred-square-v1"}, cfg.cache_dir)

        def framed_file(src: Path, folder: str, mode: str) -> Path:
            stat = src.stat()
            key = f"{src.absolute()}|{stat.st_size}|{stat.st_mtime_ns}"
            tag = hashlib.sha1(key.encode("utf-8")).hexdigest()[:8]
            out = cache / folder / f"{src.stem}_{tag}_frame{size}.png"
            if not out.exists():
                with Image.open(src) as pil:
                    if mode == "L":
                        arr = np.asarray(pil.convert("L"))[..., None]
                    else:
                        arr = np.asarray(pil.convert("RGBA" if "A" in pil.getbands() else "RGB"))
                arr = framing.frame_image(arr, size, mode="nearest" if mode == "L" else "bilinear")
                img.write_png_atomic(arr[..., 0] if mode == "L" else arr, out)
            return out

        images = img.parallel_map(lambda p: framed_file(Path(p), "images", "RGB"), list(full.image_filenames), 2)
        masks = None
        if full.mask_filenames:
            masks = img.parallel_map(lambda p: framed_file(Path(p), "masks", "L"), list(full.mask_filenames), 2)
        n = cameras.shape[0]
        intr = torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1).double()  # [N, 4]
        framed = torch.stack(
            [framing.frame_intrinsics(intr[i], int(cameras.width[i]), int(cameras.height[i]), size) for i in range(n)]
        ).float()
        new_cameras = Cameras(
            camera_to_worlds=cameras.camera_to_worlds,
            fx=framed[:, 0:1],
            fy=framed[:, 1:2],
            cx=framed[:, 2:3],
            cy=framed[:, 3:4],
            width=torch.full((n, 1), size, dtype=torch.int64),
            height=torch.full((n, 1), size, dtype=torch.int64),
            distortion_params=cameras.distortion_params,  # in normalised coordinates: unchanged by crop and resize
            camera_type=cameras.camera_type,
            times=cameras.times,
            metadata=cameras.metadata,
        )
        metadata = dict(full.metadata, frame_size=size, source_image_filenames=list(full.image_filenames))
        return replace(full, image_filenames=images, mask_filenames=masks, cameras=new_cameras, metadata=metadata)

    def normalization(self, input_c2w: torch.Tensor) -> Normalization:
        """The scene normalisation, from the input views' raw camera-to-world matrices only."""
        cfg = self.config
        center = torch.zeros(3, dtype=torch.float64) if cfg.center_method == "none" else None
        return compute_normalization(input_c2w, center=center, orient=cfg.orient, radius=cfg.camera_radius)

    def _select(self, num: int) -> tuple[List[int], List[int]]:
        cfg = self.config
        if not cfg.input_views and cfg.num_input_views > num:
            raise InputDataError(
                f"{cfg.data}: num_input_views={cfg.num_input_views} but the scene lists only {num} frames in "
                f"transforms.json; ask for at most {num - 1} (0: all frames, the dense reference)"
            )
        return select_input_views(num, cfg.num_input_views, cfg.input_view_seed, cfg.input_views, cfg.input_view_rule)

    def split_indices(self) -> tuple[List[int], List[int]]:
        """(input_view_indices, eval_view_indices) for the configured split."""
        return self._select(len(self.full_outputs().image_filenames))

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"Unknown dataparser split {split!r}; expected 'train', 'val', 'test' or 'all'")
        full = self.full_outputs()
        train_idx, eval_idx = self.split_indices()
        indices = {"train": train_idx, "all": list(range(len(full.image_filenames)))}.get(split, eval_idx)
        sel = torch.tensor(indices, dtype=torch.long)
        masks = full.mask_filenames if self.config.use_masks else None
        metadata = dict(full.metadata)
        if metadata.get("depth_filenames"):
            metadata["depth_filenames"] = [metadata["depth_filenames"][i] for i in indices]
        metadata.update(
            input_view_indices=list(train_idx),
            eval_view_indices=list(eval_idx),
            split_indices=list(indices),
            num_frames=len(full.image_filenames),
            all_image_filenames=list(full.image_filenames),
        )
        return DataparserOutputs(
            image_filenames=[full.image_filenames[i] for i in indices],
            cameras=full.cameras[sel],
            alpha_color=full.alpha_color,
            scene_box=full.scene_box,
            mask_filenames=[masks[i] for i in indices] if masks else None,
            dataparser_scale=full.dataparser_scale,
            dataparser_transform=full.dataparser_transform,
            metadata=metadata,
        )
