"""One CO3D sequence as the parser uses it: its usable frames and their cameras, in CO3D world coordinates.

A frame whose image (or, when masks are needed, mask) is missing -- a partial CO3D download -- is dropped with one
warning naming it; why each frame was dropped is kept, so a set list that lists one can say so (``splits.py``). The
cameras are converted once (``geometry.py``) and their intrinsics checked before anything is cached or trained.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch

from itergen_ns.data.co3d import annotations as ann
from itergen_ns.data.co3d import geometry as geo
from itergen_ns.data.co3d.annotations import CO3DDataError
from itergen_ns.data.image_checks import InputDataError, check_intrinsics


@dataclass
class CO3DScene:
    """Everything shared by the splits of one sequence (computed once per parser)."""

    layout: ann.CO3DLayout
    frames: List[ann.CO3DFrame]
    c2w: torch.Tensor  # [N, 3, 4] float64 OpenGL, CO3D world
    intrinsics: torch.Tensor  # [N, 4] float64 (fx, fy, cx, cy) in source pixels
    skipped: Dict[int, str] = field(default_factory=dict)  # frame number -> why it was skipped (missing image / mask)


def usable_frames(
    frames: List[ann.CO3DFrame], need_mask: bool, stacklevel: int = 2
) -> Tuple[List[ann.CO3DFrame], Dict[int, str]]:
    """Frames whose image (and, if ``need_mask``, mask) exists, and why each other frame was skipped.

    The skipped frames get one warning naming them (``stacklevel`` as for ``warnings.warn`` called here); no usable
    frame at all is an error.
    """
    usable: List[ann.CO3DFrame] = []
    skipped: List[str] = []
    reasons: Dict[int, str] = {}
    for frame in frames:
        if not frame.image_path.is_file():
            skipped.append(f"{frame.frame_number} (image {frame.image_path})")
            reasons[frame.frame_number] = f"its image {frame.image_path} is missing"
        elif need_mask and (frame.mask_path is None or not frame.mask_path.is_file()):
            skipped.append(f"{frame.frame_number} (mask {frame.mask_path or 'not annotated'})")
            reasons[frame.frame_number] = f"its mask {frame.mask_path or '(not annotated)'} is missing"
        else:
            usable.append(frame)
    if skipped:
        warnings.warn(
            f"CO3D: skipping {len(skipped)} frame(s) with missing files: {'; '.join(skipped)}", stacklevel=stacklevel
        )
    if not usable:
        raise CO3DDataError(f"sequence {frames[0].image_path.parent.parent} has no frames with readable files")
    return usable, reasons


def opengl_cameras(frames: List[ann.CO3DFrame]) -> Tuple[torch.Tensor, torch.Tensor]:
    """OpenGL camera-to-world ``[N, 3, 4]`` and pixel intrinsics ``[N, 4]`` (fx, fy, cx, cy) of the frames."""
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
    return c2w, intrinsics


def check_frame_intrinsics(layout: ann.CO3DLayout, frames: List[ann.CO3DFrame], intrinsics: torch.Tensor) -> None:
    """Focal lengths > 0 and principal points inside ``image.size``; a ``CO3DDataError`` naming the frame if not."""
    for frame, (fx, fy, cx, cy) in zip(frames, intrinsics.tolist()):
        where = f"{layout.frame_annotations}: frame {frame.frame_number} (viewpoint.focal_length/principal_point)"
        try:
            check_intrinsics(fx, fy, cx, cy, frame.width, frame.height, where, ("fx", "fy", "cx", "cy"))
        except InputDataError as err:
            raise CO3DDataError(str(err)) from err


def load_scene(data: Path, sequence_name: Optional[str], need_mask: bool, stacklevel: int = 2) -> CO3DScene:
    """The usable frames of the sequence at ``data`` with checked cameras (``stacklevel``: for the skip warning)."""
    layout = ann.resolve_layout(data, sequence_name)
    frames, skipped = usable_frames(ann.load_sequence_frames(layout), need_mask, stacklevel=stacklevel + 1)
    c2w, intrinsics = opengl_cameras(frames)
    check_frame_intrinsics(layout, frames, intrinsics)
    return CO3DScene(layout, frames, c2w, intrinsics, skipped)
