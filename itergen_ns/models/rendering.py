"""Per-camera renders of a splatfacto-family model: eval-mode toggling, RGB + surface depth of one camera, and
every frame of a camera set (the exporter's snapshots, the eval harness's scores)."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch

from nerfstudio.cameras.cameras import Cameras


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
