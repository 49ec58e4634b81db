"""The one framing of a view for the generator's world: the centred crop of the output's aspect ratio (a square for
a square size), resized to the output size, with its intrinsics.

The diffusion model is trained on snapshot frames and conditioned at test time on input photos and renders; if one
path squashed frames (non-uniform resize) and another cropped them, the model would see different geometry at train
and test time. So every path frames views with these functions:

* the CO3D parser (``frame_size``, the default of ``itergen export-snapshots``, ``itergen eval`` and
  ``ns-train itergen``) writes framed images and reports framed intrinsics, so snapshot shards, training inputs,
  evaluation renders and ground truth are all framed the same way;
* the itergen datamanager frames its conditioning images and generated cameras to the generator's resolution
  (a pure, uniform resize when the parser already framed them).

Window: the largest ``(win_h, win_w)`` with the output's aspect ratio that fits the image, centred on the image
centre (integer offsets ``((H - win_h) // 2, (W - win_w) // 2)``), then resized to ``(out_h, out_w)`` by
antialiased bilinear interpolation (``torch.nn.functional.interpolate``, ``align_corners=False``). Intrinsics in
continuous pixel coordinates (pixel centres at +0.5) transform exactly: ``f' = f * out / win``,
``c' = (c - offset) * out / win`` per axis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Tuple, TypeVar, Union

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Float, Shaped
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras

Size = Union[int, Tuple[int, int]]
"""Output size: a side (square) or ``(height, width)``."""
_Image = TypeVar("_Image", Tensor, np.ndarray)


@dataclass(frozen=True)
class FrameWindow:
    """Window ``[x0, x0 + width) x [y0, y0 + height)`` of the source image, resized to ``out_height x out_width``."""

    x0: int
    y0: int
    width: int
    height: int
    out_width: int
    out_height: int

    @property
    def is_identity(self) -> bool:
        return (self.x0, self.y0, self.width, self.height) == (0, 0, self.out_width, self.out_height)


def _out_hw(size: Size) -> Tuple[int, int]:
    out_h, out_w = (size, size) if isinstance(size, (int, np.integer)) else (int(size[0]), int(size[1]))
    if out_h < 1 or out_w < 1:
        raise ValueError(f"framing: output size must be positive, got {size}")
    return int(out_h), int(out_w)


def frame_window(width: int, height: int, size: Size) -> FrameWindow:
    """The centred window of ``size``'s aspect ratio in a ``width x height`` image (see the module docstring)."""
    out_h, out_w = _out_hw(size)
    width, height = int(width), int(height)
    if width * out_h >= height * out_w:  # image wider than the output: full height
        win_h, win_w = height, min(width, max(1, int(round(height * out_w / out_h))))
    else:
        win_w, win_h = width, min(height, max(1, int(round(width * out_h / out_w))))
    return FrameWindow((width - win_w) // 2, (height - win_h) // 2, win_w, win_h, out_w, out_h)


def frame_intrinsics(
    intrinsics: Float[Tensor, "*batch 4"], width: int, height: int, size: Size
) -> Float[Tensor, "*batch 4"]:
    """``(fx, fy, cx, cy)`` of the framed view of a ``width x height`` image (tensor or array, dtype kept)."""
    win = frame_window(width, height, size)
    sx, sy = win.out_width / win.width, win.out_height / win.height
    if isinstance(intrinsics, np.ndarray):
        scale, shift = np.array([sx, sy, sx, sy]), np.array([0.0, 0.0, win.x0, win.y0])
        return ((intrinsics - shift) * scale).astype(intrinsics.dtype)
    scale = torch.tensor([sx, sy, sx, sy], dtype=intrinsics.dtype, device=intrinsics.device)
    shift = torch.tensor([0.0, 0.0, win.x0, win.y0], dtype=intrinsics.dtype, device=intrinsics.device)
    return (intrinsics - shift) * scale


def frame_image(
    image: Shaped[_Image, "H W C"], size: Size, mode: Literal["bilinear", "nearest"] = "bilinear"
) -> Shaped[_Image, "h w C"]:
    """The framed view of an ``[H, W, C]`` image (torch tensor or numpy array, uint8 or float; type, dtype and device
    kept; uint8 is resampled in float and rounded). ``nearest`` is for label images such as masks."""
    is_numpy = isinstance(image, np.ndarray)
    x: Tensor = torch.from_numpy(np.require(image, requirements=("C", "W"))) if is_numpy else image  # type: ignore[assignment]
    if x.ndim != 3:
        raise ValueError(f"frame_image: expected an [H, W, C] image, got shape {tuple(x.shape)}")
    win = frame_window(x.shape[1], x.shape[0], size)
    if win.is_identity:
        return image
    window = x[win.y0 : win.y0 + win.height, win.x0 : win.x0 + win.width]
    if (win.width, win.height) != (win.out_width, win.out_height):
        chw = window.permute(2, 0, 1)[None].float()
        out_hw = (win.out_height, win.out_width)
        if mode == "nearest":
            chw = F.interpolate(chw, size=out_hw, mode="nearest-exact")
        else:
            chw = F.interpolate(chw, size=out_hw, mode="bilinear", align_corners=False, antialias=True)
        resized = chw[0].permute(1, 2, 0)
        if x.dtype == torch.uint8:
            resized = resized.round().clamp(0, 255)
        window = resized.to(x.dtype)
    window = window.contiguous()
    return window.numpy() if is_numpy else window  # type: ignore[return-value]


def frame_view(
    image: Shaped[_Image, "H W C"], intrinsics: Float[Tensor, "4"], size: Size
) -> Tuple[Shaped[_Image, "h w C"], Float[Tensor, "4"]]:
    """``(frame_image(image, size), frame_intrinsics(intrinsics, W, H, size))``: a view and its camera, framed."""
    height, width = image.shape[:2]
    return frame_image(image, size), frame_intrinsics(intrinsics, width, height, size)


def frame_cameras(cameras: Cameras, size: Size) -> Cameras:
    """Copies of perspective ``cameras`` (any sizes) with the intrinsics and size of their framed views."""
    out_h, out_w = _out_hw(size)
    n = cameras.shape[0]
    fx: List[Tensor] = []
    fy: List[Tensor] = []
    cx: List[Tensor] = []
    cy: List[Tensor] = []
    for i in range(n):
        intr = torch.stack([cameras.fx[i, 0], cameras.fy[i, 0], cameras.cx[i, 0], cameras.cy[i, 0]])
        f = frame_intrinsics(intr, int(cameras.width[i, 0]), int(cameras.height[i, 0]), (out_h, out_w))
        for column, value in zip((fx, fy, cx, cy), f):
            column.append(value[None])
    return Cameras(
        camera_to_worlds=cameras.camera_to_worlds,
        fx=torch.stack(fx),
        fy=torch.stack(fy),
        cx=torch.stack(cx),
        cy=torch.stack(cy),
        width=torch.full((n, 1), out_w, dtype=torch.long, device=cameras.device),
        height=torch.full((n, 1), out_h, dtype=torch.long, device=cameras.device),
        camera_type=cameras.camera_type,
    )
