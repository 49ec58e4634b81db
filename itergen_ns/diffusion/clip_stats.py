"""Camera motion of the training clips, measured on snapshot shards (what the pose sampler should imitate).

Each shard holds a whole capture, so its orbit is known from all its frames (this is training data: seeing
every frame is allowed here): centre = the point nearest every optical axis, up = the normal of the plane
through the camera centres. Per shard we measure the angle between consecutive frames as seen from the
centre, each frame's elevation above the orbit plane, and the zoom over a clip of G frames.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import numpy as np
import torch

from itergen_ns.data.camera_utils import nearest_point_to_axes, orbit_plane_normal
from itergen_ns.diffusion.sampling import ClipStatistics


def capture_motion(c2w: np.ndarray, num_frames: int, stride: float = 1.0) -> Tuple[float, np.ndarray, np.ndarray]:
    """(degrees per clip frame, elevations in degrees [F], log zoom of every G-frame window) of one capture."""
    poses = torch.from_numpy(np.asarray(c2w, np.float64))
    centre = nearest_point_to_axes(poses)
    rel = poses[:, :, 3] - centre
    up = orbit_plane_normal(rel, poses[:, :, 1].mean(0))
    if up is None:
        up = poses[:, :, 1].mean(0)
        up = up / up.norm()
    unit = rel / rel.norm(dim=-1, keepdim=True)
    step = torch.rad2deg(torch.arccos((unit[1:] * unit[:-1]).sum(-1).clamp(-1, 1))).mean().item() * stride
    elevation = torch.rad2deg(torch.arcsin((unit @ up).clamp(-1, 1))).numpy()
    dist = rel.norm(dim=-1).numpy()
    span = max(1, int(round((num_frames - 1) * stride)))
    zoom = np.log(dist[span:] / dist[:-span]) if len(dist) > span else np.zeros(0)
    return step, elevation, zoom


def measure_clip_statistics(
    captures: Sequence[np.ndarray], num_frames: int, frame_stride: Tuple[int, int] = (1, 1)
) -> ClipStatistics:
    """Mean over captures of the per-frame angle (times the mean clip stride), elevation and zoom spread."""
    stride = 0.5 * (frame_stride[0] + max(frame_stride))
    steps, elevations, zooms = [], [], []
    for c2w in captures:
        step, elevation, zoom = capture_motion(c2w, num_frames, stride)
        steps.append(step)
        elevations.append(elevation)
        zooms.append(zoom)
    if not steps:
        raise ValueError("measure_clip_statistics: no captures")
    elev = np.concatenate(elevations)
    zoom = np.concatenate(zooms) if any(len(z) for z in zooms) else np.zeros(1)
    return ClipStatistics(
        degrees_per_frame=float(np.mean(steps)),
        mean_elevation_degrees=float(elev.mean()),
        elevation_std_degrees=float(elev.std()),
        zoom_log_std=float(zoom.std()),
        num_clips=len(steps),
    )
