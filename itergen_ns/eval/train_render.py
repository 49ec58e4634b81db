"""One method's run of ``itergen eval``: train its config through nerfstudio's Trainer, render every frame of the
scene, and load the ground truth (and the foreground masks and object silhouettes where the scene has them)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, NamedTuple, Optional

import numpy as np

from itergen_ns.data.all_frames import all_frames_outputs, load_frames
from itergen_ns.data.splits import select_input_views
from itergen_ns.engine.runner import TrainSpec, build_config, train
from itergen_ns.eval.metrics import object_accumulation, object_sphere
from itergen_ns.models.rendering import render_all_frames


class MethodRenders(NamedTuple):
    """What a trained run leaves to score: uint8 renders and ground truth [F, H, W, 3], the input views, and
    the masks [F, H, W] and rendered object accumulations where the scene has them."""

    renders: np.ndarray
    targets: np.ndarray
    inputs: List[int]
    masks: Optional[np.ndarray]
    silhouettes: Optional[np.ndarray]


def train_and_render(spec: TrainSpec, use_masks: bool) -> MethodRenders:
    """Train ``spec``, then render every frame; with ``use_masks`` the scene must have foreground masks."""
    scene = spec.data
    trainer = train(build_config(spec))
    datamanager: Any = trainer.pipeline.datamanager  # nerfstudio types it as a Module attribute
    outputs = all_frames_outputs(datamanager, use_masks=use_masks or None)
    renders = render_all_frames(trainer.pipeline.model, outputs.cameras)
    size = renders.shape[1:3]
    targets = np.stack(load_frames(outputs.image_filenames, size))
    masks = None
    if use_masks and not outputs.mask_filenames:
        raise ValueError(f"{scene}: --use-masks asked for, but the scene has no foreground masks")
    mask_files = outputs.mask_filenames or _mask_filenames(datamanager)
    silhouettes = None
    if mask_files:  # object-masked PSNR and silhouette IoU wherever the scene has masks
        masks = np.stack([m[..., 0] for m in load_frames(mask_files, size)])
        sphere = object_sphere(outputs, scene)
        if sphere is not None:
            silhouettes = object_accumulation(trainer.pipeline.model, outputs.cameras, *sphere)
    num_frames = renders.shape[0]
    inputs = datamanager.train_dataparser_outputs.metadata.get("input_view_indices")
    if inputs is None:
        inputs = select_input_views(num_frames, spec.num_input_views, spec.input_view_seed)[0]
    return MethodRenders(renders, targets, list(inputs), masks, silhouettes)


def _mask_filenames(datamanager: Any) -> Optional[List[Path]]:
    """The scene's mask files when it has them, even if the run trained without masks (scoring only)."""
    try:
        return all_frames_outputs(datamanager, use_masks=True).mask_filenames
    except (FileNotFoundError, ValueError, KeyError):
        return None
