"""FullImageDatamanager for the sparse-view setting: N input views train, every other frame evaluates."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple, Type

import torch
from PIL import Image

from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.auto_dataparser import ItergenDataParserConfig
from itergen_ns.data.init_points import background_shell_points, random_points_in_bounds
from itergen_ns.data.splits import SparseSplitConfig


@dataclass
class SparseViewDatamanagerConfig(FullImageDatamanagerConfig):
    """Datamanager of the project's methods; owns the input-view split so one flag sets it for any parser."""

    _target: Type = field(default_factory=lambda: SparseViewDatamanager)
    dataparser: AnnotatedDataParserUnion = field(default_factory=ItergenDataParserConfig)
    cache_images_type: Literal["uint8", "float32"] = "uint8"
    num_input_views: int = 3
    """Number of input views (0: all frames, the dense reference)."""
    input_view_seed: int = 0
    """Seed of the deterministic input-view choice (same seed -> same inputs for every method)."""
    input_views: Optional[Tuple[int, ...]] = None
    """Explicit input frame indices; overrides num_input_views."""
    input_view_rule: Literal["random", "evenly_spaced"] = "random"
    """How num_input_views are chosen: a seeded random subset, or evenly spaced along the capture (frame list
    order; input_view_seed shifts them). Held-out frames are all the others."""
    init_num_points: int = 20000
    """Initial Gaussians: back-projected from depth (depth_model), else random in the estimated object bounds when
    the data has no point cloud."""
    init_seed: int = 0
    init_background_fraction: float = 0.25
    """Share of the random initial points placed on a background shell around the scene (0: object only)."""
    depth_model: Optional[Path] = None
    """Local transformers depth-estimation model directory (DPT / Depth Anything, with its image processor):
    initialise from the input views' depth, aligned to the estimated object distance (replaces other init points)."""
    depth_output: Literal["auto", "disparity", "depth"] = "auto"
    """What depth_model predicts: auto (metric Depth Anything -> depth, anything else -> relative inverse depth)."""


class SparseViewDatamanager(FullImageDatamanager):
    """Sets the dataparser's split from this config and supplies an initial point cloud when needed."""

    config: SparseViewDatamanagerConfig

    def __init__(self, config: SparseViewDatamanagerConfig, *args, **kwargs):
        if config.depth_model is not None:  # fail before images are loaded
            from itergen_ns.data.depth_init import check_depth_model_path

            check_depth_model_path(config.depth_model)
            if config.init_num_points <= 0:
                raise ValueError("--pipeline.datamanager.depth-model needs init-num-points > 0")
        parser_cfg = config.dataparser
        if isinstance(parser_cfg, SparseSplitConfig):
            parser_cfg.num_input_views = config.num_input_views
            parser_cfg.input_view_seed = config.input_view_seed
            parser_cfg.input_views = config.input_views
            parser_cfg.input_view_rule = config.input_view_rule
        elif config.num_input_views > 0 or config.input_views:
            raise ValueError(
                f"dataparser {type(parser_cfg).__name__} cannot select input views; use itergen-data, "
                "itergen-scene or co3d (or --pipeline.datamanager.num-input-views 0)"
            )
        super().__init__(config, *args, **kwargs)
        if len(self.train_dataset) == 0:
            raise ValueError(f"{config.data}: no input views were selected")
        if self.test_mode != "inference":  # images are decoded lazily (eval ones at the first evaluation): fail now
            check_images_readable(list(self.train_dataset.image_filenames) + list(self.eval_dataset.image_filenames))
        metadata = self.train_dataparser_outputs.metadata
        if config.depth_model is not None:
            xyz, rgb = self._depth_points()
            metadata["points3D_xyz"], metadata["points3D_rgb"] = xyz, rgb
            CONSOLE.log(f"Initialised {len(xyz)} points from the depth of {len(self.cached_train)} input view(s)")
        elif "points3D_xyz" not in metadata and config.init_num_points > 0:
            images = [uint8_image(d["image"]) for d in self.cached_train]
            cameras = self.train_dataset.cameras
            num_background = int(round(config.init_background_fraction * config.init_num_points))
            xyz, rgb = random_points_in_bounds(
                cameras, images, config.init_num_points - num_background, config.init_seed
            )
            if num_background > 0:
                bg_xyz, bg_rgb = background_shell_points(cameras, images, num_background, config.init_seed)
                xyz, rgb = torch.cat([xyz, bg_xyz]), torch.cat([rgb, bg_rgb])
            metadata["points3D_xyz"], metadata["points3D_rgb"] = xyz, rgb
            CONSOLE.log(f"Initialised {len(xyz)} points in the bounds estimated from {len(images)} input view(s)")

    def _load_images(self, split: Literal["train", "eval"], cache_images_device: Literal["cpu", "gpu"]) -> List[Dict]:
        # nerfstudio decodes in a thread pool and re-raises PIL's error without the file name; name it.
        # (a private nerfstudio 1.1.5 method: itergen_ns.compat.LOAD_IMAGES_METHOD, checked by tests/test_compat.py)
        try:
            return super()._load_images(split, cache_images_device)
        except Exception as error:
            dataset = self.train_dataset if split == "train" else self.eval_dataset
            for path in dataset.image_filenames:
                try:
                    with Image.open(path) as image:
                        image.load()
                except Exception as culprit:
                    raise ValueError(f"{path}: cannot read image ({type(culprit).__name__}: {culprit})") from error
            raise

    def _depth_points(self) -> Tuple[torch.Tensor, torch.Tensor]:
        from itergen_ns.data.depth_init import MonocularDepth, depth_points

        config = self.config
        device = "cuda" if str(self.device).startswith("cuda") else "cpu"
        assert config.depth_model is not None  # called only when it is set
        model = MonocularDepth(config.depth_model, device=device, output=config.depth_output)
        images = [uint8_image(d["image"]) for d in self.cached_train]
        masks = [d["mask"][..., 0].bool().cpu() if "mask" in d else None for d in self.cached_train]
        cameras = self.train_dataset.cameras
        return depth_points(model, cameras, images, config.init_num_points, seed=config.init_seed, masks=masks)


def uint8_image(image: torch.Tensor) -> torch.Tensor:
    """An RGB(A) cached image (uint8, or float in [0, 1]) as uint8 RGB on the CPU, for the depth model and seeding."""
    image = image.detach().cpu()[..., :3]
    return image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)


def check_images_readable(paths: Sequence[Path]) -> None:
    """Cheap integrity check of image files (header + PIL's verify, e.g. PNG chunk CRCs); raises ValueError naming
    the first unreadable file. Full decoding errors (e.g. a truncated JPEG) are named when the images are cached."""
    for path in paths:
        try:
            with Image.open(path) as image:
                image.verify()
        except Exception as e:
            raise ValueError(f"{path}: cannot read image ({type(e).__name__}: {e})") from e
