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
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.data.dataparsers.base_dataparser import DataParser, DataParserConfig, DataparserOutputs
from nerfstudio.data.scene_box import SceneBox

from itergen_ns.data import framing
from itergen_ns.data.camera_utils import nearest_point_to_axes
from itergen_ns.data.co3d import annotations as ann
from itergen_ns.data.co3d import geometry as geo
from itergen_ns.data.co3d import images as img
from itergen_ns.data.co3d.annotations import CO3DDataError, is_co3d_sequence
from itergen_ns.data.image_checks import InputDataError, check_intrinsics, image_size
from itergen_ns.data.splits import SparseSplitConfig, select_input_views

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


@dataclass
class _Scene:
    """Everything shared by the splits of one sequence (computed once per parser)."""

    layout: ann.CO3DLayout
    frames: List[ann.CO3DFrame]
    c2w: torch.Tensor  # [N, 3, 4] float64 OpenGL, CO3D world
    intrinsics: torch.Tensor  # [N, 4] float64 (fx, fy, cx, cy) in source pixels


@dataclass
class _Frame3D:
    """The run's 3D frame: computed from the input cameras (and, only when asked for, CO3D's point cloud)."""

    center: torch.Tensor  # [3] scene centre in CO3D world
    normalization: geo.Normalization
    points: Optional[Tuple[np.ndarray, np.ndarray]]  # CO3D-world xyz [P, 3], rgb uint8 [P, 3]


@dataclass
class _Prepared:
    image_path: Path
    mask_path: Optional[Path]
    intrinsics: np.ndarray
    width: int
    height: int
    crop_fallback: bool = False


class CO3DDataParser(DataParser):
    """Reads one CO3D v2 sequence into nerfstudio cameras, images, masks and a sparse-view split."""

    config: CO3DDataParserConfig

    def __init__(self, config: CO3DDataParserConfig):
        super().__init__(config=config)
        self._scene: Optional[_Scene] = None
        self._frame3d: Optional[_Frame3D] = None
        self._skipped: Dict[int, str] = {}  # frame number -> why it was skipped (missing image / mask)

    # ----------------------------------------------------------------------------------------------- scene
    def _needs_masks(self) -> bool:
        cfg = self.config
        return (
            cfg.use_masks
            or cfg.mask_background != "none"
            or (cfg.crop_size is not None and cfg.crop_center == "mask_bbox")
        )

    def _usable_frames(self, frames: List[ann.CO3DFrame]) -> List[ann.CO3DFrame]:
        """Drop frames whose image (or, when masks are needed, mask) is missing, with one warning naming them."""
        need_mask = self._needs_masks()
        usable, skipped = [], []
        for frame in frames:
            if not frame.image_path.is_file():
                skipped.append(f"{frame.frame_number} (image {frame.image_path})")
                self._skipped[frame.frame_number] = f"its image {frame.image_path} is missing"
            elif need_mask and (frame.mask_path is None or not frame.mask_path.is_file()):
                skipped.append(f"{frame.frame_number} (mask {frame.mask_path or 'not annotated'})")
                self._skipped[frame.frame_number] = f"its mask {frame.mask_path or '(not annotated)'} is missing"
            else:
                usable.append(frame)
        if skipped:
            warnings.warn(
                f"CO3D: skipping {len(skipped)} frame(s) with missing files: {'; '.join(skipped)}", stacklevel=3
            )
        if not usable:
            raise CO3DDataError(f"sequence {frames[0].image_path.parent.parent} has no frames with readable files")
        return usable

    def _load_points(self, layout: ann.CO3DLayout) -> Optional[Tuple[np.ndarray, np.ndarray]]:
        """CO3D-world point cloud of the sequence (path from sequence_annotations, else ``pointcloud.ply``).

        Only for the explicit leak flags (load_3d_points, center_method="pointcloud"): it is reconstructed from all frames.
        """
        path = layout.sequence_dir / "pointcloud.ply"
        record = ann.load_sequence_annotation(layout)
        if record and isinstance(record.get("point_cloud"), dict) and record["point_cloud"].get("path"):
            path = layout.root / record["point_cloud"]["path"]
        if not path.is_file():
            return None
        import trimesh  # nerfstudio dependency; imported lazily as it is only needed here

        cloud = trimesh.load(path, process=False)
        xyz = np.asarray(getattr(cloud, "vertices", np.zeros((0, 3))), dtype=np.float64)
        if xyz.shape[0] == 0:
            return None
        colors = np.asarray(getattr(cloud, "colors", np.zeros((0, 4))))
        rgb = colors[:, :3].astype(np.uint8) if colors.shape[0] == xyz.shape[0] else np.full_like(xyz, 128, np.uint8)
        return xyz, rgb

    def _get_scene(self) -> _Scene:
        if self._scene is not None:
            return self._scene
        cfg = self.config
        layout = ann.resolve_layout(cfg.data, cfg.sequence_name)
        frames = self._usable_frames(ann.load_sequence_frames(layout))
        c2w = geo.pytorch3d_to_opengl_c2w(
            torch.from_numpy(np.stack([f.R for f in frames])), torch.from_numpy(np.stack([f.T for f in frames]))
        )
        intrinsics = geo.ndc_to_pixel_intrinsics(
            torch.from_numpy(np.stack([f.focal_length for f in frames])),
            torch.from_numpy(np.stack([f.principal_point for f in frames])),
            torch.tensor([f.width for f in frames]),
            torch.tensor([f.height for f in frames]),
            [f.intrinsics_format for f in frames],
        )
        for frame, (fx, fy, cx, cy) in zip(frames, intrinsics.tolist()):
            where = f"{layout.frame_annotations}: frame {frame.frame_number} (viewpoint.focal_length/principal_point)"
            try:
                check_intrinsics(fx, fy, cx, cy, frame.width, frame.height, where, ("fx", "fy", "cx", "cy"))
            except InputDataError as err:
                raise CO3DDataError(str(err)) from err
        self._scene = _Scene(layout, frames, c2w, intrinsics)
        return self._scene

    def _get_frame3d(self) -> _Frame3D:
        """Normalisation from the train split's cameras only (the same for every split)."""
        if self._frame3d is not None:
            return self._frame3d
        cfg = self.config
        scene = self._get_scene()
        inputs = scene.c2w[self.split_indices()["train"]]
        points = self._load_points(scene.layout) if (cfg.load_3d_points or cfg.center_method == "pointcloud") else None
        if cfg.center_method == "pointcloud" and points is not None:
            lo, hi = np.quantile(points[0], [0.01, 0.99], axis=0)  # robust bounding box
            center = torch.from_numpy((lo + hi) / 2.0)
        elif cfg.center_method == "none":
            center = torch.zeros(3, dtype=torch.float64)
        else:
            if cfg.center_method == "pointcloud":
                warnings.warn(
                    f"CO3D: no point cloud for {scene.layout.sequence_dir}; centring on the camera axes", stacklevel=2
                )
            center = nearest_point_to_axes(inputs)
        normalization = geo.compute_normalization(inputs, center=center, orient=cfg.orient, radius=cfg.camera_radius)
        self._frame3d = _Frame3D(center, normalization, points)
        return self._frame3d

    # ----------------------------------------------------------------------------------------------- splits
    def _choose(self, frames: List[ann.CO3DFrame], pool: List[int]) -> Tuple[List[int], List[int]]:
        """Train/eval positions (into ``frames``) chosen among the positions in ``pool``."""
        cfg = self.config
        explicit = None
        if cfg.input_frame_numbers:
            pool_frames = [frames[i] for i in pool]
            explicit = ann.frame_numbers_to_positions(pool_frames, cfg.input_frame_numbers, "input_frame_numbers")
        elif cfg.input_views:
            explicit = list(cfg.input_views)
        elif cfg.num_input_views > len(pool):
            scene = self._get_scene()
            source = f"set list {cfg.set_list!r}" if cfg.set_list else f"{scene.layout.frame_annotations}"
            raise CO3DDataError(
                f"sequence {scene.layout.sequence_name!r}: num_input_views={cfg.num_input_views} but {source} has only "
                f"{len(pool)} usable frames; ask for at most {len(pool) - 1} (0: all frames, the dense reference)"
            )
        train, evaluation = select_input_views(
            len(pool), cfg.num_input_views, cfg.input_view_seed, explicit, cfg.input_view_rule
        )
        return [pool[i] for i in train], [pool[i] for i in evaluation]

    def split_indices(self) -> Dict[str, List[int]]:
        """Positions (into the usable, frame-number-sorted frames) of the ``train``, ``val`` and ``test`` splits.

        With a set list: if this sequence has frames both in ``train`` and in ``val``/``test``, the set list *is* the
        split; otherwise its frames form the pool that ``num_input_views`` chooses from.
        """
        scene = self._get_scene()
        frames = scene.frames
        all_positions = list(range(len(frames)))
        if not self.config.set_list:
            train, evaluation = self._choose(frames, all_positions)
            return {"train": train, "val": evaluation, "test": evaluation}
        subsets = ann.load_set_list(scene.layout.category_dir, self.config.set_list, scene.layout.sequence_name)
        position = {f.frame_number: i for i, f in enumerate(frames)}

        list_file = ann.set_list_path(scene.layout.category_dir, self.config.set_list)

        def positions(subset: str) -> List[int]:
            missing = [n for n in subsets.get(subset, []) if n in self._skipped]
            if missing:  # the set list is the evaluation protocol: a listed frame may not silently disappear
                raise CO3DDataError(
                    f"set list {list_file}: subset {subset!r} lists frame {missing[0]} of sequence "
                    f"{scene.layout.sequence_name!r}, but {self._skipped[missing[0]]}"
                    + (f" (and {len(missing) - 1} more listed frames)" if len(missing) > 1 else "")
                )
            return sorted(position[n] for n in subsets.get(subset, []) if n in position)

        train, val, test = positions("train"), positions("val"), positions("test")
        if train and (val or test):
            return {"train": train, "val": val or test, "test": test or val}
        pool = sorted(set(train) | set(val) | set(test))
        if not pool:
            raise CO3DDataError(f"set list {self.config.set_list!r}: none of its frames of this sequence are usable")
        train, evaluation = self._choose(frames, pool)
        return {"train": train, "val": evaluation, "test": evaluation}

    # ----------------------------------------------------------------------------------------------- images
    def _prepare(self, scene: _Scene, indices: List[int]) -> List[_Prepared]:
        """Image/mask files and intrinsics for the frames at ``indices`` (processing them into the cache if needed)."""
        cfg = self.config
        cropping = cfg.crop_size is not None
        frame_size = None if cropping else cfg.frame_size
        processing = cropping or frame_size is not None or cfg.mask_background != "none"
        if not processing and not cfg.use_masks:
            return [self._raw(scene, i) for i in indices]
        settings = {
            "mask_background": cfg.mask_background,
            "mask_threshold": cfg.mask_threshold,
            "crop_center": cfg.crop_center if cropping else None,
            "frame": "centred-square-v1" if frame_size is not None else None,
        }
        cache = img.cache_folder(scene.layout.sequence_dir, settings, cfg.cache_dir)
        center_px = None
        if cropping and cfg.crop_center == "scene_center":
            center = self._get_frame3d().center
            center_px = geo.project_opengl(scene.c2w[indices], scene.intrinsics[indices], center[None])[:, 0]
        need_mask = self._needs_masks()

        def work(k: int) -> _Prepared:
            i = indices[k]
            frame = scene.frames[i]
            w, h = frame.width, frame.height
            self._check_image_header(frame)  # size and EXIF orientation, also when the processed file is cached
            alpha = img.load_soft_mask(frame.mask_path, (w, h)) if need_mask else None
            box, fallback = None, False
            if cropping:
                center = img.mask_bbox_center(alpha, cfg.mask_threshold) if cfg.crop_center == "mask_bbox" else None
                if center is None:
                    fallback = cfg.crop_center == "mask_bbox"
                    if center_px is None:  # mask_bbox fallback: the projected scene centre
                        point = self._get_frame3d().center[None]
                        uv = geo.project_opengl(scene.c2w[i : i + 1], scene.intrinsics[i : i + 1], point)[0, 0]
                    else:
                        uv = center_px[k]
                    u, v = uv.tolist()
                    center = (u, v) if np.isfinite([u, v]).all() else (w / 2.0, h / 2.0)
                box = img.square_crop_box(center, cfg.crop_size, w, h, cfg.crop_output_size)
            name = frame.image_path.stem + (f"_crop{box.x0}_{box.y0}_{box.side}_{box.out_size}" if box else "")
            if frame_size is not None:
                name += f"_frame{frame_size}"
            image_path = cache / "images" / f"{name}.png" if processing else frame.image_path
            mask_path = cache / "masks" / f"{name}.png" if cfg.use_masks else None
            if processing and not image_path.exists():
                with Image.open(frame.image_path) as pil:
                    rgb = np.asarray(pil.convert("RGB"))
                self._check_size(frame, rgb.shape[1], rgb.shape[0])
                if cfg.mask_background != "none":
                    rgb = img.composite(rgb, alpha, img.BACKGROUND_COLORS[cfg.mask_background])
                if box is not None:
                    rgb = img.apply_crop(rgb, box, Image.Resampling.BILINEAR)
                if frame_size is not None:
                    rgb = framing.frame_image(rgb, frame_size)
                img.write_png_atomic(rgb, image_path)
            if mask_path is not None and not mask_path.exists():
                binary = ((alpha >= cfg.mask_threshold) * 255).astype(np.uint8)
                if box is not None:
                    binary = img.apply_crop(binary, box, Image.Resampling.NEAREST)
                if frame_size is not None:
                    binary = framing.frame_image(binary[..., None], frame_size, mode="nearest")[..., 0]
                img.write_png_atomic(binary, mask_path)
            intr = scene.intrinsics[i].numpy()
            if box is not None:
                intr, w, h = img.crop_intrinsics(intr, box), box.out_size, box.out_size
            elif frame_size is not None:
                intr, w, h = framing.frame_intrinsics(intr, w, h, frame_size), frame_size, frame_size
            return _Prepared(image_path, mask_path, intr, w, h, fallback)

        prepared = img.parallel_map(work, list(range(len(indices))), cfg.num_workers)
        fell_back = [scene.frames[i].frame_number for i, p in zip(indices, prepared) if p.crop_fallback]
        if fell_back:
            warnings.warn(
                f"CO3D: empty masks for frames {fell_back}; cropped around the projected scene centre", stacklevel=3
            )
        return prepared

    def _raw(self, scene: _Scene, i: int) -> _Prepared:
        frame = scene.frames[i]
        self._check_image_header(frame)
        return _Prepared(frame.image_path, None, scene.intrinsics[i].numpy(), frame.width, frame.height)

    def _check_size(self, frame: ann.CO3DFrame, width: int, height: int) -> None:
        if (width, height) != (frame.width, frame.height):
            raise CO3DDataError(
                f"image {frame.image_path} is {width}x{height} (W x H) but its annotation image.size says "
                f"{frame.width}x{frame.height} (frame {frame.frame_number} in {self._get_scene().layout.frame_annotations})"
            )

    def _check_image_header(self, frame: ann.CO3DFrame) -> None:
        """The stored size is the annotation's ``image.size`` and there is no EXIF rotation (header only for JPEG)."""
        try:
            size = image_size(frame.image_path, f"frame {frame.frame_number}")
        except InputDataError as err:  # one error class for the CO3D parser
            raise CO3DDataError(str(err)) from err
        self._check_size(frame, *size)

    # ----------------------------------------------------------------------------------------------- outputs
    def _generate_dataparser_outputs(self, split: str = "train", **kwargs) -> DataparserOutputs:
        if split not in ("train", "val", "test", "all"):
            raise ValueError(f"CO3D dataparser: unknown split {split!r}; expected train, val, test or all")
        scene = self._get_scene()
        splits = self.split_indices()
        indices = list(range(len(scene.frames))) if split == "all" else splits[split]
        prepared = self._prepare(scene, indices)
        frame3d = self._get_frame3d()
        norm = frame3d.normalization
        c2w = norm.apply_to_poses(scene.c2w[indices])
        intr = torch.from_numpy(np.stack([p.intrinsics for p in prepared])).float()
        cameras = Cameras(
            camera_to_worlds=c2w.float(),
            fx=intr[:, 0:1],
            fy=intr[:, 1:2],
            cx=intr[:, 2:3],
            cy=intr[:, 3:4],
            width=torch.tensor([[p.width] for p in prepared], dtype=torch.int32),
            height=torch.tensor([[p.height] for p in prepared], dtype=torch.int32),
            camera_type=CameraType.PERSPECTIVE,
        )
        input_centres = norm.apply_to_poses(scene.c2w[splits["train"]])[:, :, 3]
        extent = float(input_centres.norm(dim=-1).median()) * self.config.scene_box_scale
        scene_box = SceneBox(aabb=torch.tensor([[-extent] * 3, [extent] * 3], dtype=torch.float32))
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
            metadata["points3D_xyz"] = norm.apply_to_points(torch.from_numpy(frame3d.points[0])).float()
            metadata["points3D_rgb"] = torch.from_numpy(frame3d.points[1])
        return DataparserOutputs(
            image_filenames=[p.image_path for p in prepared],
            cameras=cameras,
            scene_box=scene_box,
            mask_filenames=[p.mask_path for p in prepared] if self.config.use_masks else None,
            metadata=metadata,
            dataparser_transform=norm.transform.float(),
            dataparser_scale=norm.scale,
        )
