"""What the exporter reads and writes per scene: every frame in its run's coordinate frame with checked pixels
(:class:`SceneFrames`), the run's input positions among them, and the optional render-latent encoder."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float, UInt8
from PIL import Image

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig


class SceneError(ValueError):
    """A scene cannot be exported (too few frames, unreadable image, ...); the message names the scene."""


@dataclass
class SceneFrames:
    """Every frame of a scene in the coordinate frame its training run uses, with ground-truth pixels."""

    scene: Path
    filenames: List[Path]
    cameras: Cameras
    images: UInt8[np.ndarray, "F H W 3"]
    masks: Optional[UInt8[np.ndarray, "F H W"]]
    c2w: Float[np.ndarray, "F 3 4"]
    intrinsics: Float[np.ndarray, "F 4"]

    @property
    def num_frames(self) -> int:
        return len(self.filenames)

    @property
    def size(self) -> Tuple[int, int]:
        return int(self.images.shape[1]), int(self.images.shape[2])


def _load_pixels(path: Path, size: Tuple[int, int], mode: str, scene: Path) -> np.ndarray:
    """uint8 pixels of ``path`` in PIL ``mode``; the size must be the camera's (H, W)."""
    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert(mode), dtype=np.uint8)
    except (OSError, ValueError) as err:
        raise SceneError(f"scene {scene}: unreadable image {path} ({err})") from err
    if arr.shape[:2] != size:
        raise SceneError(f"scene {scene}: {path} is {arr.shape[1]}x{arr.shape[0]}, its camera says {size[1]}x{size[0]}")
    return arr


def load_scene_frames(scene: Path, parser: DataParserConfig) -> SceneFrames:
    """All frames of ``scene`` through ``parser`` (``split="all"``: normalised from the parser's input split, as the
    run that uses these inputs is), images loaded and checked for one size."""
    parser = copy.deepcopy(parser)
    parser.data = Path(scene)
    try:
        outputs = parser.setup().get_dataparser_outputs(split="all")
    except (ValueError, OSError) as err:  # malformed annotations, missing or unreadable files
        raise SceneError(f"scene {scene}: {err}") from err
    cameras = outputs.cameras
    heights, widths = cameras.height.view(-1), cameras.width.view(-1)
    if not (torch.all(heights == heights[0]) and torch.all(widths == widths[0])):
        raise SceneError(f"scene {scene}: frames differ in size; a shard needs one size (for CO3D set a square crop)")
    size = (int(heights[0]), int(widths[0]))
    images = np.stack([_load_pixels(p, size, "RGB", scene) for p in outputs.image_filenames])
    masks = None
    if outputs.mask_filenames:
        masks = np.stack([_load_pixels(p, size, "L", scene) for p in outputs.mask_filenames])
    intrinsics = torch.stack([cameras.fx, cameras.fy, cameras.cx, cameras.cy], -1).view(-1, 4)
    return SceneFrames(
        scene=Path(scene),
        filenames=[Path(p) for p in outputs.image_filenames],
        cameras=cameras,
        images=images,
        masks=masks,
        c2w=cameras.camera_to_worlds.numpy().astype(np.float32),
        intrinsics=intrinsics.numpy().astype(np.float32),
    )


def input_indices(frames: SceneFrames, datamanager) -> List[int]:
    """Positions (in ``frames``) of the training run's input views, checked to share its cameras."""
    position = {p.resolve(): i for i, p in enumerate(frames.filenames)}
    outputs = datamanager.train_dataparser_outputs
    try:
        indices = [position[Path(p).resolve()] for p in outputs.image_filenames]
    except KeyError as err:
        raise RuntimeError(f"scene {frames.scene}: input view {err} is not one of the scene's frames") from err
    train_c2w = outputs.cameras.camera_to_worlds.numpy()
    if not np.allclose(train_c2w, frames.c2w[indices], atol=1e-5):
        raise RuntimeError(f"scene {frames.scene}: training and export cameras differ (normalisation mismatch)")
    return indices


# ------------------------------------------------------------------------------------------------ rendering


class RenderLatentEncoder:
    """The VAE of an itergen diffusion checkpoint, encoding renders exactly as the diffusion trainer would.

    Renders are resized to the model resolution and stored as scaled latents (posterior mode * scaling_factor,
    ``IterGenDiffusionModel.encode_latents``) in fp16; the trainer uses them instead of encoding on the fly
    when their shape matches its model's.
    """

    def __init__(self, checkpoint: Path, device: Optional[str] = None, batch: int = 32):
        from itergen_ns.diffusion.model import IterGenDiffusionModel

        self.checkpoint = Path(checkpoint)
        self.model = IterGenDiffusionModel.from_pretrained(self.checkpoint)
        self.model.to(device or ("cuda" if torch.cuda.is_available() else "cpu")).eval()
        self.batch = batch
        self.shape = (self.model.latent_channels, *self.model.latent_hw)

    @torch.no_grad()
    def __call__(self, renders: UInt8[np.ndarray, "N H W 3"]) -> Float[np.ndarray, "N c h w"]:
        out = np.empty((len(renders), *self.shape), dtype=np.float16)
        for i in range(0, len(renders), self.batch):
            x = torch.from_numpy(np.ascontiguousarray(renders[i : i + self.batch])).permute(0, 3, 1, 2).float() / 255
            out[i : i + self.batch] = self.model.encode_latents(self.model.resize(x)).cpu().numpy().astype(np.float16)
        return out
