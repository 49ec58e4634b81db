"""nerfstudio dataparser for one CO3D v2 sequence (``--data <root>/<category>/<sequence>``).

What it produces, per split:

* cameras: CO3D's PyTorch3D extrinsics and NDC intrinsics converted to nerfstudio OpenGL cameras (see
  ``itergen_ns/data/co3d/geometry.py`` for the conventions), then normalised from the *input* (train-split) cameras
  only (``itergen_ns/data/normalization.py``): centred on the point nearest to the input camera axes, the input orbit's
  normal (1-2 inputs: their up vector) rotated to +z, and scaled so the median input-camera distance is
  ``camera_radius``. Every split gets that same transform, so renders of held-out frames are consistent with the
  model, and the 3D frame of a run does not depend on which or how many held-out frames exist. The transform is
  recorded as ``dataparser_transform`` / ``dataparser_scale`` so exports map back to CO3D world coordinates.
* splits: ``num_input_views`` frames chosen by ``select_input_views`` (a seeded random subset, or with
  ``input_view_rule="evenly_spaced"`` evenly spaced in frame-number order; or explicit ones) for ``train``, all other
  frames for ``val``/``test``; optionally restricted or defined by a CO3D set list. Asking for more input views than
  the sequence (or set list) has usable frames is an error.
* checks, before anything is cached or trained (one-line ``CO3DDataError``s naming the file and field): finite
  ``viewpoint`` fields, focal lengths > 0, a principal point inside the annotated ``image.size``, every image's stored
  size equal to ``image.size`` and no EXIF rotation. A frame whose image (or needed mask) is missing is skipped with a
  warning naming it (a partial CO3D download), unless the set list in use lists it: that is an error. ``split="all"`` gives every usable frame
  (with the same normalisation; ``metadata["input_view_indices"]`` are positions in that list).
* framing: by default every frame is framed by ``itergen_ns.data.framing`` (centred square crop resized to
  ``frame_size``), the one framing shared by the snapshot exporter, the eval harness and the itergen generator; an
  object crop (``crop_size``) replaces it.
* images: the CO3D files as they are, or -- framed, cropped or with a background colour -- processed PNGs cached under
  ``<sequence>/.itergen_cache/<settings hash>/`` (written atomically, reused on later runs).
* initial points: none. The sequence's ``pointcloud.ply`` is CO3D's reconstruction from *all* frames, so it is only
  read with ``load_3d_points`` / ``center_method="pointcloud"`` (never for evaluation); the datamanager initialises
  from the input views instead.

Backgrounds: ``mask_background="white"|"black"`` alpha-composites every image (train and eval) onto that colour with
CO3D's soft foreground mask, ``I' = m * I + (1 - m) * colour``, so a model rendering that background colour is scored on
the object only; the colour is reported in ``metadata["background_color"]`` so the model's background can be set to
match. ``use_masks`` independently passes binarised masks (``mask >= mask_threshold``) as ``mask_filenames``: nerfstudio
then drops background pixels from the training loss. ``"none"`` keeps CO3D's real backgrounds.

The work is done in ``itergen_ns/data/co3d/``: ``scene.py`` (usable frames, cameras), ``splits.py``, ``frame3d.py``
(centre, normalisation, point cloud) and ``prepared_frames.py`` (images, masks, intrinsics); this parser ties them
together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type, cast

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from itergen_ns.data.co3d import images as img
from itergen_ns.data.co3d import splits as co3d_splits
from itergen_ns.data.co3d.annotations import CO3DDataError, is_co3d_sequence
from itergen_ns.data.co3d.frame3d import Frame3D, compute_frame3d
from itergen_ns.data.co3d.prepared_frames import FrameProcessing, PreparedFrame, prepare_frames
from itergen_ns.data.co3d.scene import CO3DScene, load_scene
from itergen_ns.data.splits import SparseSplitConfig

__all__ = ["CO3DDataParserConfig", "CO3DDataParser", "CO3DDataError", "is_co3d_sequence"]


@dataclass
class CO3DDataParserConfig(DataParserConfig, SparseSplitConfig):
    """CO3D v2 sequence dataparser (``--data <root>/<category>/<sequence>``)."""

    _target: Type = field(default_factory=lambda: CO3DDataParser)
    data: Path = Path()
    """CO3D sequence folder ``<root>/<category>/<sequence>`` (or the category folder together with sequence_name)."""
    sequence_name: Optional[str] = None
    """Sequence to load when ``data`` is a category folder."""
    input_frame_numbers: Optional[Tuple[int, ...]] = None
    """Explicit input views as CO3D frame numbers (takes precedence over input_views, which are list positions)."""
    set_list: Optional[str] = None
    """CO3D set list to use, e.g. ``fewview_dev`` (-> ``<category>/set_lists/set_lists_fewview_dev.json``)."""
    center_method: Literal["axes", "pointcloud", "none"] = "axes"
    """Scene centre: point nearest to the input cameras' axes (one input: on its axis), or keep CO3D's origin.
    "pointcloud" centres on the bounding box of CO3D's point cloud, which is reconstructed from ALL frames: it leaks
    held-out geometry, not for evaluation."""
    orient: bool = True
    """Rotate the normal of the input cameras' orbit plane (1-2 inputs: their up vector) to +z."""
    camera_radius: Optional[float] = 1.0
    """Scale so the median input-camera distance to the centre is this; None keeps CO3D's scale."""
    scene_box_scale: float = 1.0
    """Half-size of the scene box, in units of the median input-camera distance."""
    load_3d_points: bool = False
    """Pass the sequence's point cloud as ``points3D_xyz``/``points3D_rgb`` (initial Gaussians). It is CO3D's
    reconstruction from ALL frames of the sequence, so it leaks held-out geometry: not for evaluation."""
    frame_size: Optional[int] = 256
    """The shared framing (``itergen_ns.data.framing``): each frame's centred square crop resized to this side. Used
    when crop_size is None; None keeps full frames (frames of different sizes cannot be scored together)."""
    use_masks: bool = False
    """Pass binarised CO3D foreground masks as mask_filenames (nerfstudio ignores masked-out pixels in the loss)."""
    mask_threshold: float = 0.5
    """Soft CO3D mask values at or above this count as foreground."""
    mask_background: Literal["none", "white", "black"] = "none"
    """Composite every image onto this colour with the soft mask (``none``: keep the real background)."""
    crop_size: Optional[int] = None
    """Side (source pixels) of a square crop around the object, shrunk to fit each image; replaces the framing
    (frame_size). None: no object crop."""
    crop_output_size: Optional[int] = None
    """Resize crops to this side in pixels (None: keep crop_size)."""
    crop_center: Literal["mask_bbox", "scene_center"] = "mask_bbox"
    """Centre crops on the foreground mask's bounding box or on the projected scene centre."""
    cache_dir: Optional[Path] = None
    """Where processed images go (default ``<sequence>/.itergen_cache``, or the temp folder if not writable)."""
    num_workers: int = 2
    """Threads for image processing."""


def _cameras(c2w: torch.Tensor, prepared: List[PreparedFrame]) -> Cameras:
    """nerfstudio perspective cameras from normalised OpenGL ``c2w`` [N, 3, 4] and the prepared frames' intrinsics."""
    intr = torch.from_numpy(np.stack([p.intrinsics for p in prepared])).float()
    return Cameras(
        camera_to_worlds=c2w.float(),
        fx=intr[:, 0:1],
        fy=intr[:, 1:2],
        cx=intr[:, 2:3],
        cy=intr[:, 3:4],
        width=torch.tensor([[p.width] for p in prepared], dtype=torch.int32),
        height=torch.tensor([[p.height] for p in prepared], dtype=torch.int32),
        camera_type=CameraType.PERSPECTIVE,
    )


class CO3DDataParser(DataParser):
    """Reads one CO3D v2 sequence into nerfstudio cameras, images, masks and a sparse-view split."""

    config: CO3DDataParserConfig

    def __init__(self, config: CO3DDataParserConfig):
        super().__init__(config=config)
        self._scene: Optional[CO3DScene] = None
        self._frame3d: Optional[Frame3D] = None

    def _processing(self) -> FrameProcessing:
        """The image settings of the config, for ``prepared_frames``."""
        cfg = self.config
        return FrameProcessing(
            frame_size=cfg.frame_size,
            use_masks=cfg.use_masks,
            mask_threshold=cfg.mask_threshold,
            mask_background=cfg.mask_background,
            crop_size=cfg.crop_size,
            crop_output_size=cfg.crop_output_size,
            crop_center=cfg.crop_center,
            cache_dir=cfg.cache_dir,
            num_workers=cfg.num_workers,
        )

    def _get_scene(self) -> CO3DScene:
        """The sequence's usable frames and cameras, loaded once (a skip warning points at this method's caller)."""
        if self._scene is None:
            cfg = self.config
            self._scene = load_scene(cfg.data, cfg.sequence_name, self._processing().needs_masks, stacklevel=3)
        return self._scene

    def _get_frame3d(self) -> Frame3D:
        """Normalisation from the train split's cameras only (the same for every split)."""
        if self._frame3d is None:
            cfg = self.config
            scene = self._get_scene()
            inputs = scene.c2w[self.split_indices()["train"]]
            self._frame3d = compute_frame3d(
                inputs, scene.layout, cfg.center_method, cfg.orient, cfg.camera_radius, cfg.load_3d_points, stacklevel=3
            )
        return self._frame3d

    def split_indices(self) -> Dict[str, List[int]]:
        """Positions (into the usable, frame-number-sorted frames) of the ``train``, ``val`` and ``test`` splits.

        With a set list: if this sequence has frames both in ``train`` and in ``val``/``test``, the set list *is* the
        split; otherwise its frames form the pool that ``num_input_views`` chooses from.
        """
        cfg = self.config
        return co3d_splits.split_indices(self._get_scene(), cfg, cfg.input_frame_numbers, cfg.set_list)

    def _metadata(self, scene: CO3DScene, splits: Dict[str, List[int]], indices: List[int], frame3d: Frame3D) -> Dict:
        """CO3D identity, split positions, background colour and (leak flag only) the normalised point cloud."""
        background = self.config.mask_background
        metadata: Dict = {
            "co3d_sequence": scene.layout.sequence_name,
            "co3d_category": scene.layout.category_dir.name,
            "co3d_frame_numbers": [scene.frames[i].frame_number for i in indices],
            # positions in the split="all" list (every usable frame), as the sparse nerfstudio parser reports them
            "input_view_indices": list(splits["train"]),
            "eval_view_indices": list(splits["val"]),
            "split_indices": list(indices),
            "num_frames": len(scene.frames),
            "background_color": None
            if background == "none"
            else torch.tensor(img.BACKGROUND_COLORS[background], dtype=torch.float32) / 255.0,
        }
        if self.config.load_3d_points and frame3d.points is not None:  # explicit leak flag (see its help)
            norm = frame3d.normalization
            metadata["points3D_xyz"] = norm.apply_to_points(torch.from_numpy(frame3d.points[0])).float()
            metadata["points3D_rgb"] = torch.from_numpy(frame3d.points[1])
        return metadata

    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"CO3D dataparser: unknown split {split!r}; expected train, val, test or all")
        scene = self._get_scene()
        splits = self.split_indices()
        indices = list(range(len(scene.frames))) if split == "all" else splits[split]
        # the scene centre is computed only if a crop needs it; the fallback warning points at this method's caller
        prepared = prepare_frames(scene, indices, self._processing(), lambda: self._get_frame3d().center)
        frame3d = self._get_frame3d()
        norm = frame3d.normalization
        input_centres = norm.apply_to_poses(scene.c2w[splits["train"]])[:, :, 3]
        extent = float(input_centres.norm(dim=-1).median()) * self.config.scene_box_scale
        return DataparserOutputs(
            image_filenames=[p.image_path for p in prepared],
            cameras=_cameras(norm.apply_to_poses(scene.c2w[indices]), prepared),
            scene_box=SceneBox(aabb=torch.tensor([[-extent] * 3, [extent] * 3], dtype=torch.float32)),
            mask_filenames=cast(List[Path], [p.mask_path for p in prepared]) if self.config.use_masks else None,
            metadata=self._metadata(scene, splits, indices, frame3d),
            dataparser_transform=norm.transform.float(),
            dataparser_scale=norm.scale,
        )
