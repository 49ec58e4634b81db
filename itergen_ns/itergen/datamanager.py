"""IterGenDataManager: serves the training batch of each step, an input view or a generated one.

With probability ``p_input`` (and always while the pool is empty) a step trains on an input view, otherwise on a
frame of the generated-view pool that :class:`~itergen_ns.itergen.generation.ClipGeneration` fills (the pipeline
wires the two together and drives generation; nothing here renders or samples).

Batch contract (:class:`TrainBatch`), what the model's loss reads: ``image`` (uint8 [H, W, 3] on the device),
``image_idx`` (the input's index, -1 for a generated view) and ``is_generated`` (:data:`GENERATED_KEY`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type, TypedDict

import torch

from nerfstudio.cameras.cameras import Cameras

from itergen_ns.data.camera_utils import to_homogeneous
from itergen_ns.data.datamanager import SparseViewDatamanager, SparseViewDatamanagerConfig
from itergen_ns.data.framing import frame_cameras, frame_image
from itergen_ns.itergen.generation import GeneratedViewPool, InputViews
from itergen_ns.models.itergen_model import GENERATED_KEY


class TrainBatch(TypedDict, total=False):
    """One training step's batch (the keys the model's loss reads; input views also carry nerfstudio's own)."""

    image: torch.Tensor
    image_idx: int
    is_generated: bool


assert GENERATED_KEY in TrainBatch.__annotations__


@dataclass
class IterGenDataManagerConfig(SparseViewDatamanagerConfig):
    _target: Type = field(default_factory=lambda: IterGenDataManager)
    p_input: float = 0.75
    """Probability that a training step uses an input view rather than a generated one (0.5 / 0.75 and pool 2 / 4
    were within noise of each other on 4 validation scenes, README "Pool settings")."""


class IterGenDataManager(SparseViewDatamanager):
    config: IterGenDataManagerConfig

    def __init__(self, config: IterGenDataManagerConfig, *args, **kwargs):
        if config.input_views is not None and len(config.input_views) == 0:
            raise ValueError("itergen needs at least one input view: --pipeline.datamanager.input-views is empty")
        if not 0.0 <= config.p_input <= 1.0:
            raise ValueError(f"--pipeline.datamanager.p-input must be in [0, 1], got {config.p_input}")
        super().__init__(config, *args, **kwargs)
        self.generated: Optional[GeneratedViewPool] = None
        self._rng = random.Random(torch.initial_seed())

    def serve_generated(self, pool: GeneratedViewPool, seed: int) -> None:
        """Draw generated views from ``pool`` from now on; ``seed`` seeds the input/generated choice and the pool's
        frame order (the run's generation seed). Called by the pipeline."""
        self.generated = pool
        self._rng = random.Random(seed)

    def input_views(self, size: Tuple[int, int]) -> InputViews:
        """The input views framed to (H, W) ``size``: images in [0, 1], 4x4 c2w poses and the framed cameras."""
        images = []
        for data in self.cached_train:
            img = data["image"][..., :3].cpu()
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            images.append(frame_image(img, size).permute(2, 0, 1).clamp(0, 1))
        cameras = self.train_dataset.cameras
        return InputViews(
            images=torch.stack(images),
            poses=to_homogeneous(cameras.camera_to_worlds.float()),
            cameras=frame_cameras(cameras, size),
        )

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        """The step's camera and batch (keys: :class:`TrainBatch`)."""
        if not self.generated or self._rng.random() < self.config.p_input:
            camera, data = super().next_train(step)
            data[GENERATED_KEY] = False
            return camera, data
        view = self.generated.draw(self._rng)
        image = view.image.to(self.device)
        batch: TrainBatch = {"image": image, "is_generated": True, "image_idx": -1}
        return view.camera.to(self.device), dict(batch)
