"""nerfstudio-format scenes in the sparse-view setting: train = N chosen input views, val/test = the other frames.

nerfstudio's parser reads every frame (``eval_mode="all"``) *without* its own orientation, centring and scaling
(``auto_orient_and_center_poses`` and ``auto_scale_poses`` would use all frames, held-out ones included). The
project's normalisation (``itergen_ns/data/normalization.py``) is then computed from the input views only and
applied to every frame, so all splits share one coordinate frame and that frame does not depend on the held-out
cameras. ``split="all"`` gives every frame. Frame indices are positions in nerfstudio's sorted frame list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import List, Literal, Optional, Type

import torch

from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataparserOutputs
from nerfstudio.data.dataparsers.nerfstudio_dataparser import Nerfstudio, NerfstudioDataParserConfig

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


def check_transforms(data: Path, check_masks: bool = True) -> Path:
    """Validate a nerfstudio dataset before parsing; return the transforms.json path.

    Raises FileNotFoundError for a missing transforms.json / image / mask file and ValueError for malformed
    JSON or frames, naming the file and field at fault.
    """
    path = data if data.suffix == ".json" else data / "transforms.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: transforms.json not found (expected a nerfstudio-format scene folder)")
    try:
        meta = json.loads(path.read_text())
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
        for key in ("file_path", "mask_path") if check_masks else ("file_path",):
            if key in frame and not (root / frame[key]).is_file():
                raise FileNotFoundError(f"{root / frame[key]}: file of frames[{i}].{key} in {path} not found")
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
            self._full = full
        return self._full

    def normalization(self, input_c2w: torch.Tensor) -> Normalization:
        """The scene normalisation, from the input views' raw camera-to-world matrices only."""
        cfg = self.config
        center = torch.zeros(3, dtype=torch.float64) if cfg.center_method == "none" else None
        return compute_normalization(input_c2w, center=center, orient=cfg.orient, radius=cfg.camera_radius)

    def _select(self, num: int) -> tuple[List[int], List[int]]:
        return select_input_views(num, self.config.num_input_views, self.config.input_view_seed, self.config.input_views)

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
