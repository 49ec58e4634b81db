"""Live viewer additions for itergen: the latest generated clip as camera frustums textured with the generated
images, plus a panel with the clip's renders (top) and samples (bottom) and generation stats."""

from __future__ import annotations

import base64
import io
from typing import Optional

import numpy as np
import torch
from PIL import Image

from itergen_ns.itergen.datamanager import GeneratedClip

SCALE_RATIO = 10.0  # nerfstudio's viewer draws the scene 10x larger (VISER_NERFSTUDIO_SCALE_RATIO)


def rotation_to_wxyz(rot: np.ndarray) -> np.ndarray:
    """Unit quaternion (w, x, y, z) of a 3x3 rotation matrix."""
    m = rot
    w = np.sqrt(max(0.0, 1.0 + m[0, 0] + m[1, 1] + m[2, 2])) / 2
    x = np.sqrt(max(0.0, 1.0 + m[0, 0] - m[1, 1] - m[2, 2])) / 2
    y = np.sqrt(max(0.0, 1.0 - m[0, 0] + m[1, 1] - m[2, 2])) / 2
    z = np.sqrt(max(0.0, 1.0 - m[0, 0] - m[1, 1] + m[2, 2])) / 2
    x = np.copysign(x, m[2, 1] - m[1, 2])
    y = np.copysign(y, m[0, 2] - m[2, 0])
    z = np.copysign(z, m[1, 0] - m[0, 1])
    return np.array([w, x, y, z])


def contact_sheet(clip: GeneratedClip, max_frames: int = 8) -> np.ndarray:
    """uint8 [2H, kW, 3]: renders of the 3D model on top, generated images below."""
    idx = np.linspace(0, clip.images.shape[0] - 1, min(max_frames, clip.images.shape[0])).round().astype(int)
    top = torch.cat([clip.renders[i] for i in idx], dim=2)
    bottom = torch.cat([clip.images[i] for i in idx], dim=2)
    sheet = torch.cat([top, bottom], dim=1).permute(1, 2, 0).clamp(0, 1)
    return (sheet.numpy() * 255).round().astype(np.uint8)


def png_data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class GeneratedViewsPanel:
    """Draws the newest generated clip into a viser server (the nerfstudio viewer's or any other)."""

    def __init__(self, server, frustum_scale: float = 0.1):
        self.server = server
        self.frustum_scale = frustum_scale
        self.shown_clips = 0
        self.handles: list = []
        self.folder = server.gui.add_folder("IterGen generations")
        with self.folder:
            self.markdown = server.gui.add_markdown("No clip generated yet.")

    def update(self, clip: Optional[GeneratedClip], num_clips: int, timings: Optional[dict] = None) -> bool:
        """Show ``clip`` if it is newer than the one on screen; returns whether anything changed."""
        if clip is None or num_clips <= self.shown_clips:
            return False
        for handle in self.handles:
            handle.remove()
        self.handles = []
        cams = clip.cameras
        for i in range(clip.images.shape[0]):
            c2w = clip.poses[i].double().numpy()
            rot = c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenGL camera -> viser's OpenCV frustum
            image = (clip.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            fy, h, w = float(cams.fy[i]), float(cams.height[i]), float(cams.width[i])
            self.handles.append(
                self.server.scene.add_camera_frustum(
                    name=f"/itergen/generated/frame_{i:03d}",
                    fov=float(2 * np.arctan(0.5 * h / fy)),
                    aspect=w / h,
                    scale=self.frustum_scale,
                    image=image,
                    wxyz=rotation_to_wxyz(rot),
                    position=c2w[:3, 3] * SCALE_RATIO,
                    color=(255, 140, 0),
                )
            )
        stats = ""
        if timings:
            stats = " · ".join(f"{k}: {v:.1f}s total" for k, v in timings.items())
        self.markdown.content = (
            f"**Clip {num_clips}** (from the step-{clip.step} model, {clip.images.shape[0]} frames)  \n{stats}\n\n"
            f"Top: renders of the 3D model · bottom: generated\n\n![clip]({png_data_uri(contact_sheet(clip))})"
        )
        self.shown_clips = num_clips
        return True
