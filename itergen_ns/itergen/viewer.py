"""Live viewer additions for itergen: the latest generated clip as camera frustums textured with the generated
images, plus a panel with the clip's renders (top) and samples (bottom) and generation stats.

Readability: the frustums are sized to the scene (a fraction of the cameras' distance to the scene centre, not a
fixed size that is a speck next to a 10x-scaled scene) and drawn on top of the splat render, which otherwise hides
them where the viewer's "Composite depth" puts the splat (or its floaters) in front; the panel's image sheet is a
grid upsampled with nearest-neighbour to a readable size, so 32-px frames stay sharp and square.
"""

from __future__ import annotations

import base64
import io
import json
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from itergen_ns import compat
from itergen_ns.itergen.generation import GeneratedClip

SCALE_RATIO = 10.0  # nerfstudio's viewer draws the scene 10x larger (VISER_NERFSTUDIO_SCALE_RATIO)
NODE_PREFIX = "/itergen/generated"
FRUSTUM_COLOR = (255, 140, 0)

# Run once in each browser (viser replays it to clients that connect later): every 250 ms, scene nodes under
# NODE_PREFIX get depth testing off and a late render order, so the clip's frustums and images draw over the
# depth-composited splat render. viser 0.2 has no per-node depth-test option; its client evals RunJavascriptMessage
# with its `viewer` context in scope (that is how it loads plotly). Without that context nothing happens.
ON_TOP_JS = """(() => {
  if (typeof viewer === "undefined" || window.__itergenOnTop) return;
  window.__itergenOnTop = true;
  const prefix = %s;
  setInterval(() => {
    const refs = viewer.nodeRefFromName.current;
    for (const name in refs) {
      const node = refs[name];
      if (!name.startsWith(prefix) || !node || !node.traverse) continue;  // frames and the path
      node.traverse((o) => {
        if (!o.material || o.userData.itergenOnTop) return;
        for (const m of [].concat(o.material)) { m.depthTest = false; m.depthWrite = false; m.needsUpdate = true; }
        o.renderOrder = 1e6;
        o.userData.itergenOnTop = true;
      });
    }
  }, 250);
})();""" % json.dumps(NODE_PREFIX)


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


def frustum_size(poses: torch.Tensor, fraction: float) -> float:
    """Frustum scale in viser units: ``fraction`` of the cameras' median distance to the origin (nerfstudio's
    dataparsers centre the scene there), so frustums keep the same size relative to the scene at any scale."""
    dist = float(poses[:, :3, 3].double().norm(dim=-1).median()) * SCALE_RATIO
    return fraction * dist if math.isfinite(dist) and dist > 1e-6 else fraction * SCALE_RATIO


def contact_sheet(clip: GeneratedClip, max_frames: int = 8, columns: int = 4, min_width: int = 480) -> np.ndarray:
    """uint8 [H', W', 3]: renders of the 3D model in the top block, the generated images in the same grid positions
    below a separator; frames in rows of ``columns``, upsampled with nearest-neighbour (an integer factor, so the
    pixels stay square and sharp) to at least ``min_width`` px wide."""
    count = min(max_frames, clip.images.shape[0])
    idx = np.linspace(0, clip.images.shape[0] - 1, count).round().astype(int)
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    _, h, w = clip.images.shape[1:]

    def grid(frames: torch.Tensor) -> torch.Tensor:
        out = torch.ones(3, rows * h, columns * w)
        for k, i in enumerate(idx):
            r, c = divmod(k, columns)
            out[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = frames[i]
        return out

    sep = max(1, h // 8)
    separator = torch.full((3, sep, columns * w), 0.5)
    rows_hwc = torch.cat([grid(clip.renders), separator, grid(clip.images)], dim=1).permute(1, 2, 0).clamp(0, 1)
    sheet = (rows_hwc.numpy() * 255).round().astype(np.uint8)
    factor = max(1, -(-min_width // sheet.shape[1]))
    return np.repeat(np.repeat(sheet, factor, axis=0), factor, axis=1)


def png_data_uri(image: np.ndarray) -> str:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


class GeneratedViewsPanel:
    """Draws the newest generated clip into a viser server (the nerfstudio viewer's or any other).

    ``frustum_scale``: frustum size as a fraction of the cameras' distance to the scene centre. ``on_top``: draw
    the clip's frustums over the splat render (see ON_TOP_JS)."""

    def __init__(self, server, frustum_scale: float = 0.08, on_top: bool = True):
        self.server = server
        self.frustum_scale = frustum_scale
        self.shown_clips = 0
        self.handles: list = []
        self.path = None  # the clip's camera path, replaced in place by the next clip's
        self.folder = server.gui.add_folder("IterGen generations")
        with self.folder:
            # image_root: only data: URIs are shown; set so that viser does not warn about relative paths
            self.markdown = server.gui.add_markdown("No clip generated yet.", image_root=Path("."))
            self.show_frustums = server.gui.add_checkbox("Show clip cameras", True)
        self.show_frustums.on_update(lambda _: self._set_visible(self.show_frustums.value))
        if on_top:
            self._send_on_top_js()

    def _send_on_top_js(self) -> None:
        try:
            compat.queue_viser_message(self.server, compat.run_javascript_message(ON_TOP_JS))
        except (AttributeError, ImportError, TypeError):  # another viser: frustums stay depth-tested
            pass

    def _set_visible(self, visible: bool) -> None:
        for handle in self.handles + ([self.path] if self.path is not None else []):
            handle.visible = visible

    def update(self, clip: Optional[GeneratedClip], num_clips: int, timings: Optional[dict] = None) -> bool:
        """Show ``clip`` if it is newer than the one on screen; returns whether anything changed."""
        if clip is None or num_clips <= self.shown_clips:
            return False
        for handle in self.handles:
            handle.remove()
        self.handles = []
        cams = clip.cameras
        scale = frustum_size(clip.poses, self.frustum_scale)
        for i in range(clip.images.shape[0]):
            c2w = clip.poses[i].double().numpy()
            rot = c2w[:3, :3] @ np.diag([1.0, -1.0, -1.0])  # OpenGL camera -> viser's OpenCV frustum
            image = (clip.images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            fy, h, w = float(cams.fy[i]), float(cams.height[i]), float(cams.width[i])
            self.handles.append(
                self.server.scene.add_camera_frustum(
                    name=f"{NODE_PREFIX}/frame_{i:03d}",
                    fov=float(2 * np.arctan(0.5 * h / fy)),
                    aspect=w / h,
                    scale=scale,
                    image=image,
                    format="png",  # 32-px frames: jpeg blocks would be a large part of the picture
                    wxyz=rotation_to_wxyz(rot),
                    position=c2w[:3, 3] * SCALE_RATIO,
                    color=FRUSTUM_COLOR,
                    visible=bool(self.show_frustums.value),
                )
            )
        if clip.poses.shape[0] > 1:  # a pixel-wide line through the camera centres: visible at any zoom
            self.path = self.server.scene.add_spline_catmull_rom(
                name=f"{NODE_PREFIX}_path",
                positions=clip.poses[:, :3, 3].double().numpy() * SCALE_RATIO,
                line_width=3.0,
                color=FRUSTUM_COLOR,
                visible=bool(self.show_frustums.value),
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
