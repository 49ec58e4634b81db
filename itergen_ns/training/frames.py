"""Every frame of a trained scene: cameras with the training normalisation, ground truth, and renders."""

from __future__ import annotations

import copy
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs

from itergen_ns.data.framing import frame_image
from itergen_ns.data.splits import SparseSplitConfig


def all_frames_outputs(datamanager, use_masks: Optional[bool] = None) -> DataparserOutputs:
    """Every frame of the scene, in order, with the training split's normalisation and framing
    (``use_masks`` overrides the parser's choice, e.g. to score with masks a model trained without).

    The project's parsers normalise from the input views, so this asks the run's own parser config (same split)
    for ``split="all"``; re-parsing with every frame as an input would compute a different normalisation.
    """
    parser_config = copy.deepcopy(datamanager.dataparser.config)
    if use_masks is not None:
        parser_config.use_masks = use_masks
    if isinstance(parser_config, SparseSplitConfig):
        return parser_config.setup().get_dataparser_outputs(split="all")
    parser_config.num_input_views = 0  # another parser: its normalisation does not depend on the split
    parser_config.input_views = None
    return parser_config.setup().get_dataparser_outputs(split="train")


def load_rgb(path: Path, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """uint8 RGB of ``path``, framed to (H, W) by ``itergen_ns.data.framing`` when given and different (never
    squashed); the error names the file."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"{path}: unreadable image ({err})") from err
    if size is not None and rgb.shape[:2] != tuple(size):
        rgb = frame_image(rgb, tuple(size))
    return rgb


def load_frames(paths: List[Path], size: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    return [load_rgb(p, size) for p in paths]


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """Render with a fixed background and no densification bookkeeping; restores training mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        if was_training:
            model.train()


SURFACE_ALPHA = 0.5
"""Accumulated opacity above which a pixel counts as showing a surface (its depth is kept, else 0)."""


def surface_depth(outputs) -> torch.Tensor:
    """Depth [H, W] of a render's outputs along the viewing axis, 0 where no surface (accumulation < 0.5)."""
    depth = outputs["depth"][..., 0].float()
    return torch.where(outputs["accumulation"][..., 0] >= SURFACE_ALPHA, depth, torch.zeros_like(depth))


def render_rgb_depth(model, cameras: Cameras, index: int) -> tuple[torch.Tensor, torch.Tensor]:
    """RGB [H, W, 3] in [0, 1] and surface depth [H, W] of camera ``index`` (under ``eval_mode``/``no_grad``)."""
    outputs = model.get_outputs_for_camera(cameras[index : index + 1].to(model.device))
    return outputs["rgb"].clamp(0, 1), surface_depth(outputs)


@torch.no_grad()
def render_all_frames(
    model,
    cameras: Cameras,
    out: Optional[np.ndarray] = None,
    accumulation: bool = False,
    depth_out: Optional[np.ndarray] = None,
):
    """Render ``model`` at every camera into uint8 [F, H, W, 3] (``out`` when given, e.g. a memory map);
    with ``accumulation``, also return the accumulated opacity as float32 [F, H, W] (silhouette metrics);
    with ``depth_out`` ([F, H, W], e.g. a float16 memory map), also write each frame's surface depth there."""
    frames, alphas = [], []
    with eval_mode(model):
        for i in range(cameras.shape[0]):
            outputs = model.get_outputs_for_camera(cameras[i : i + 1].to(model.device))
            frame = (outputs["rgb"].clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
            if accumulation:
                alphas.append(outputs["accumulation"][..., 0].float().cpu().numpy())
            if depth_out is not None:
                depth_out[i] = surface_depth(outputs).cpu().numpy()
            if out is not None:
                out[i] = frame
            else:
                frames.append(frame)
    rgb = out if out is not None else np.stack(frames)
    return (rgb, np.stack(alphas)) if accumulation else rgb
