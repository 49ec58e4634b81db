"""Per-frame image preparation for the CO3D parser: the image/mask files nerfstudio reads, and their intrinsics.

A frame is used as CO3D stores it, or -- framed (``itergen_ns.data.framing``), object-cropped or composited onto a
background colour -- processed once into a PNG in the settings-keyed cache folder (``images.cache_folder``, written
atomically, reused on later runs). With ``use_masks`` a binarised mask is written alongside. The intrinsics follow the
same crop/resize, so cameras and pixels agree. Every image's header is checked (stored size equal to the annotation's
``image.size``, no EXIF rotation), also when its processed file is already cached.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Literal, Optional, Tuple, cast

import numpy as np
import torch
from PIL import Image

from itergen_ns.data import framing
from itergen_ns.data.co3d import annotations as ann
from itergen_ns.data.co3d import geometry as geo
from itergen_ns.data.co3d import images as img
from itergen_ns.data.co3d.annotations import CO3DDataError
from itergen_ns.data.co3d.scene import CO3DScene
from itergen_ns.data.image_checks import InputDataError, image_size

SceneCenter = Callable[[], torch.Tensor]
"""Returns the scene centre [3] in CO3D world; called only when a crop needs it (it may normalise the scene)."""


@dataclass(frozen=True)
class FrameProcessing:
    """The parser settings that decide how frames are processed (the image fields of ``CO3DDataParserConfig``)."""

    frame_size: Optional[int]
    use_masks: bool
    mask_threshold: float
    mask_background: Literal["none", "white", "black"]
    crop_size: Optional[int]
    crop_output_size: Optional[int]
    crop_center: Literal["mask_bbox", "scene_center"]
    cache_dir: Optional[Path]
    num_workers: int

    @property
    def cropping(self) -> bool:
        return self.crop_size is not None

    @property
    def framed_size(self) -> Optional[int]:
        """Side of the shared framing, or None (no framing; an object crop replaces it)."""
        return None if self.cropping else self.frame_size

    @property
    def processing(self) -> bool:
        """Whether images are rewritten into the cache (else the CO3D files are used as they are)."""
        return self.cropping or self.framed_size is not None or self.mask_background != "none"

    @property
    def needs_masks(self) -> bool:
        """Whether every frame needs its CO3D mask (passed to nerfstudio, composited, or centring the crop)."""
        return self.use_masks or self.mask_background != "none" or (self.cropping and self.crop_center == "mask_bbox")

    def cache_settings(self) -> Dict[str, object]:
        """What the cached files depend on besides their names (hashed into the cache folder's name)."""
        return {
            "mask_background": self.mask_background,
            "mask_threshold": self.mask_threshold,
            "crop_center": self.crop_center if self.cropping else None,
            "frame": "centred-square-v1" if self.framed_size is not None else None,
        }


@dataclass
class PreparedFrame:
    """One frame as nerfstudio gets it: image (and mask) file, pixel intrinsics (fx, fy, cx, cy) and size."""

    image_path: Path
    mask_path: Optional[Path]
    intrinsics: np.ndarray
    width: int
    height: int
    crop_fallback: bool = False  # the mask was empty: the crop is centred on the projected scene centre


def check_size(frame: ann.CO3DFrame, width: int, height: int, annotations: Path) -> None:
    """The image is ``width`` x ``height`` as its annotation's ``image.size`` (in file ``annotations``) says."""
    if (width, height) != (frame.width, frame.height):
        raise CO3DDataError(
            f"image {frame.image_path} is {width}x{height} (W x H) but its annotation image.size says "
            f"{frame.width}x{frame.height} (frame {frame.frame_number} in {annotations})"
        )


def check_image_header(frame: ann.CO3DFrame, annotations: Path) -> None:
    """The stored size is the annotation's ``image.size`` and there is no EXIF rotation (header only for JPEG)."""
    try:
        size = image_size(frame.image_path, f"frame {frame.frame_number}")
    except InputDataError as err:  # one error class for the CO3D parser
        raise CO3DDataError(str(err)) from err
    assert size is not None  # image_size raises on an unreadable file
    check_size(frame, *size, annotations)


def unprocessed_frame(scene: CO3DScene, i: int) -> PreparedFrame:
    """Frame ``i`` as CO3D stores it (checked header, no mask, source intrinsics)."""
    frame = scene.frames[i]
    check_image_header(frame, scene.layout.frame_annotations)
    return PreparedFrame(frame.image_path, None, scene.intrinsics[i].numpy(), frame.width, frame.height)


def choose_crop_box(
    scene: CO3DScene,
    i: int,
    alpha: Optional[np.ndarray],
    options: FrameProcessing,
    projected_center: Optional[torch.Tensor],
    scene_center: SceneCenter,
) -> Tuple[img.CropBox, bool]:
    """Object crop of frame ``i`` and whether it fell back from an empty mask to the projected scene centre.

    ``projected_center`` is the scene centre already projected into this frame (``crop_center="scene_center"``);
    for the mask fallback it is projected here. A centre that does not project (behind the camera) is the image's.
    """
    frame = scene.frames[i]
    assert options.crop_size is not None
    center = None
    if options.crop_center == "mask_bbox":
        assert alpha is not None  # needs_masks holds for mask_bbox crops
        center = img.mask_bbox_center(alpha, options.mask_threshold)
    fallback = False
    if center is None:
        fallback = options.crop_center == "mask_bbox"
        uv = projected_center
        if uv is None:  # mask_bbox fallback: the projected scene centre
            uv = geo.project_opengl(scene.c2w[i : i + 1], scene.intrinsics[i : i + 1], scene_center()[None])[0, 0]
        u, v = uv.tolist()
        center = (u, v) if np.isfinite([u, v]).all() else (frame.width / 2.0, frame.height / 2.0)
    box = img.square_crop_box(center, options.crop_size, frame.width, frame.height, options.crop_output_size)
    return box, fallback


def processed_name(frame: ann.CO3DFrame, box: Optional[img.CropBox], framed_size: Optional[int]) -> str:
    """Cache file stem: the source stem plus the crop window and framing, so changed crops never collide."""
    name = frame.image_path.stem + (f"_crop{box.x0}_{box.y0}_{box.side}_{box.out_size}" if box else "")
    if framed_size is not None:
        name += f"_frame{framed_size}"
    return name


def write_processed_image(
    frame: ann.CO3DFrame,
    alpha: Optional[np.ndarray],
    box: Optional[img.CropBox],
    options: FrameProcessing,
    path: Path,
    annotations: Path,
) -> None:
    """Read the source image, composite it onto the background, crop or frame it, and write it to ``path``."""
    with Image.open(frame.image_path) as pil:
        rgb = np.asarray(pil.convert("RGB"))
    check_size(frame, rgb.shape[1], rgb.shape[0], annotations)
    if options.mask_background != "none":
        assert alpha is not None  # needs_masks holds with a background colour
        rgb = img.composite(rgb, alpha, img.BACKGROUND_COLORS[options.mask_background])
    if box is not None:
        rgb = img.apply_crop(rgb, box, Image.Resampling.BILINEAR)
    if options.framed_size is not None:
        rgb = framing.frame_image(rgb, options.framed_size)
    img.write_png_atomic(rgb, path)


def write_binary_mask(alpha: np.ndarray, box: Optional[img.CropBox], options: FrameProcessing, path: Path) -> None:
    """Binarise the soft mask at ``mask_threshold``, crop or frame it like its image (nearest), write it to ``path``."""
    binary = ((alpha >= options.mask_threshold) * 255).astype(np.uint8)
    if box is not None:
        binary = img.apply_crop(binary, box, Image.Resampling.NEAREST)
    if options.framed_size is not None:
        binary = framing.frame_image(binary[..., None], options.framed_size, mode="nearest")[..., 0]
    img.write_png_atomic(binary, path)


def output_intrinsics(
    intrinsics: np.ndarray, width: int, height: int, box: Optional[img.CropBox], framed_size: Optional[int]
) -> Tuple[np.ndarray, int, int]:
    """Intrinsics and size of the image nerfstudio reads: after the object crop, or the framing, or unchanged."""
    if box is not None:
        return img.crop_intrinsics(intrinsics, box), box.out_size, box.out_size
    if framed_size is not None:  # frame_intrinsics takes arrays too (and keeps them arrays), though hinted as tensors
        framed = cast(np.ndarray, framing.frame_intrinsics(cast(Any, intrinsics), width, height, framed_size))
        return framed, framed_size, framed_size
    return intrinsics, width, height


def prepare_frame(
    scene: CO3DScene,
    i: int,
    options: FrameProcessing,
    cache: Path,
    projected_center: Optional[torch.Tensor],
    scene_center: SceneCenter,
) -> PreparedFrame:
    """Frame ``i`` with its processed image (and mask) in ``cache``, written unless already there."""
    frame = scene.frames[i]
    annotations = scene.layout.frame_annotations
    check_image_header(frame, annotations)  # size and EXIF orientation, also when the processed file is cached
    alpha = None
    if options.needs_masks:
        assert frame.mask_path is not None  # usable_frames dropped frames without a mask
        alpha = img.load_soft_mask(frame.mask_path, (frame.width, frame.height))
    box, fallback = None, False
    if options.cropping:
        box, fallback = choose_crop_box(scene, i, alpha, options, projected_center, scene_center)
    name = processed_name(frame, box, options.framed_size)
    image_path = cache / "images" / f"{name}.png" if options.processing else frame.image_path
    mask_path = cache / "masks" / f"{name}.png" if options.use_masks else None
    if options.processing and not image_path.exists():
        write_processed_image(frame, alpha, box, options, image_path, annotations)
    if mask_path is not None and not mask_path.exists():
        assert alpha is not None  # needs_masks holds with use_masks
        write_binary_mask(alpha, box, options, mask_path)
    intrinsics, width, height = output_intrinsics(
        scene.intrinsics[i].numpy(), frame.width, frame.height, box, options.framed_size
    )
    return PreparedFrame(image_path, mask_path, intrinsics, width, height, fallback)


def prepare_frames(
    scene: CO3DScene, indices: List[int], options: FrameProcessing, scene_center: SceneCenter
) -> List[PreparedFrame]:
    """Image/mask files and intrinsics for the frames at ``indices`` (processing them into the cache if needed).

    Frames whose empty mask made the crop fall back to the projected scene centre get one warning, pointing at the
    caller of the parser's ``_generate_dataparser_outputs`` (this is called from it).
    """
    if not options.processing and not options.use_masks:
        return [unprocessed_frame(scene, i) for i in indices]
    cache = img.cache_folder(scene.layout.sequence_dir, options.cache_settings(), options.cache_dir)
    projected = None
    if options.cropping and options.crop_center == "scene_center":
        projected = geo.project_opengl(scene.c2w[indices], scene.intrinsics[indices], scene_center()[None])[:, 0]

    def work(k: int) -> PreparedFrame:
        uv = None if projected is None else projected[k]
        return prepare_frame(scene, indices[k], options, cache, uv, scene_center)

    prepared = img.parallel_map(work, list(range(len(indices))), options.num_workers)
    fell_back = [scene.frames[i].frame_number for i, p in zip(indices, prepared) if p.crop_fallback]
    if fell_back:
        warnings.warn(
            f"CO3D: empty masks for frames {fell_back}; cropped around the projected scene centre", stacklevel=3
        )
    return prepared
