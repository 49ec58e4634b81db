"""FullImageDatamanager for the sparse-view setting: N input views train, every other frame evaluates."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional, Tuple, Type

import torch

from nerfstudio.configs.dataparser_configs import AnnotatedDataParserUnion
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.auto_dataparser import ItergenDataParserConfig
from itergen_ns.data.init_points import random_points_in_bounds
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
    init_num_points: int = 20000
    """Random initial Gaussians in the estimated object bounds, used when the data has no point cloud."""
    init_seed: int = 0


class SparseViewDatamanager(FullImageDatamanager):
    """Sets the dataparser's split from this config and supplies an initial point cloud when needed."""

    config: SparseViewDatamanagerConfig

    def __init__(self, config: SparseViewDatamanagerConfig, *args, **kwargs):
        parser_cfg = config.dataparser
        if isinstance(parser_cfg, SparseSplitConfig):
            parser_cfg.num_input_views = config.num_input_views
            parser_cfg.input_view_seed = config.input_view_seed
            parser_cfg.input_views = config.input_views
        elif config.num_input_views > 0 or config.input_views:
            raise ValueError(
                f"dataparser {type(parser_cfg).__name__} cannot select input views; use itergen-data, "
                "itergen-scene or co3d (or --pipeline.datamanager.num-input-views 0)"
            )
        super().__init__(config, *args, **kwargs)
        if len(self.train_dataset) == 0:
            raise ValueError(f"{config.data}: no input views were selected")
        metadata = self.train_dataparser_outputs.metadata
        if "points3D_xyz" not in metadata and config.init_num_points > 0:
            images = [self._uint8_image(d["image"]) for d in self.cached_train]
            xyz, rgb = random_points_in_bounds(
                self.train_dataset.cameras, images, config.init_num_points, seed=config.init_seed
            )
            metadata["points3D_xyz"], metadata["points3D_rgb"] = xyz, rgb
            CONSOLE.log(f"Initialised {len(xyz)} points in the bounds estimated from {len(images)} input view(s)")

    @staticmethod
    def _uint8_image(image: torch.Tensor) -> torch.Tensor:
        image = image.detach().cpu()[..., :3]
        return image if image.dtype == torch.uint8 else (image.clamp(0, 1) * 255).round().to(torch.uint8)
