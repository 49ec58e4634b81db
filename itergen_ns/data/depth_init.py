"""Initial point cloud from monocular depth (docs/architecture.md, "Initialisation"): a transformers depth-estimation model (DPT, Depth Anything,
...) loaded from a local directory runs on the input views; its relative depth is aligned to the estimated object
distance and every pixel becomes a coloured 3D point.

Alignment (per image). Monocular models predict depth only up to an unknown affine map: relative models (DPT/MiDaS,
Depth Anything) predict affine-invariant *inverse* depth ("disparity"), metric models predict depth. The scene
supplies what is missing: the estimated object centre (point nearest to all optical axes, as for the random
initialisation) lies at z-depth ``d0`` in the camera, and the estimated object radius is ``r``. Over the pixels that
can show the object -- the mask when the data has one, else the object sphere's projected disc -- the 5th and 95th
percentiles of the prediction are mapped affinely onto the sphere's depth range: near end ``d0 - r``, far end
``d0 + r`` (for disparity the map is affine in 1/z; for depth, in z). Pixels whose aligned depth falls outside
``[max(d0 - 2r, 0.05 d0), d0 + 2r]`` (far background, inverse-depth blow-ups) are dropped; ``num_points`` of the
rest are drawn uniformly (seeded) and back-projected through their pixel centres (+0.5).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Literal, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, UInt8
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras

from itergen_ns.data.init_points import estimate_object_bounds

DepthOutput = Literal["auto", "disparity", "depth"]
LOW_Q, HIGH_Q = 0.05, 0.95
"""Percentiles of the prediction mapped onto the near and far ends of the object sphere."""


def check_depth_model_path(path: Path) -> Path:
    """``path`` if it is a local transformers model directory, else a FileNotFoundError naming it (nothing downloads)."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise FileNotFoundError(
            f"depth model {path}: no such directory. --pipeline.datamanager.depth-model takes a local transformers "
            "depth-estimation model (e.g. a copy of depth-anything/Depth-Anything-V2-Small-hf or Intel/dpt-hybrid-midas "
            "saved with save_pretrained); nothing is downloaded"
        )
    missing = [name for name in ("config.json", "preprocessor_config.json") if not (path / name).is_file()]
    if missing:
        raise FileNotFoundError(
            f"depth model {path}: missing {', '.join(missing)} (save both the model and its image processor with "
            "save_pretrained into this directory)"
        )
    return path


class MonocularDepth:
    """A transformers depth-estimation model and its image processor, loaded from a local directory only."""

    def __init__(self, path: Path, device: torch.device | str = "cpu", output: DepthOutput = "auto"):
        from transformers import AutoImageProcessor, AutoModelForDepthEstimation

        self.path = check_depth_model_path(path)
        try:
            self.model = AutoModelForDepthEstimation.from_pretrained(self.path, local_files_only=True)
            self.processor = AutoImageProcessor.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError, KeyError) as e:
            raise ValueError(f"depth model {self.path}: cannot load a transformers depth-estimation model ({e})") from e
        self.device = torch.device(device)
        self.model.to(self.device).eval()
        if output == "auto":  # Depth Anything's metric checkpoints say so; every other relative model is inverse depth
            output = (
                "depth" if getattr(self.model.config, "depth_estimation_type", "relative") == "metric" else "disparity"
            )
        self.output: Literal["disparity", "depth"] = output

    @torch.no_grad()
    def predict(self, image: UInt8[Tensor, "H W 3"]) -> Float[Tensor, "H W"]:
        """The model's raw prediction, resized (bilinear) to the image's resolution."""
        inputs = self.processor(images=image[..., :3].cpu().numpy(), return_tensors="pt")
        pixel_values = inputs["pixel_values"].to(self.device, dtype=self.model.dtype)
        pred = self.model(pixel_values=pixel_values).predicted_depth.float()
        pred = F.interpolate(pred.reshape(1, 1, *pred.shape[-2:]), size=tuple(image.shape[:2]), mode="bilinear")
        return pred[0, 0].cpu()


def object_disc(camera: Cameras, centre: Float[Tensor, "3"], radius: float) -> Tuple[Bool[Tensor, "H W"], float]:
    """Pixels inside the projection of the object sphere, and the z-depth ``d0`` of its centre in ``camera``."""
    c2w = camera.camera_to_worlds.reshape(3, 4).float()
    local = (centre.float() - c2w[:, 3]) @ c2w[:, :3]  # OpenGL camera coordinates (looking along -z)
    d0 = float(-local[2])
    if d0 <= radius:
        raise ValueError(f"the estimated object centre is {d0:.3g} in front of an input camera (radius {radius:.3g})")
    fx, fy = float(camera.fx.reshape(())), float(camera.fy.reshape(()))
    cx, cy = float(camera.cx.reshape(())), float(camera.cy.reshape(()))
    u0, v0 = fx * float(local[0]) / d0 + cx, -fy * float(local[1]) / d0 + cy
    h, w = int(camera.height.reshape(())), int(camera.width.reshape(()))
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    disc = ((u - u0) / fx) ** 2 + ((v - v0) / fy) ** 2 <= (radius / d0) ** 2
    return disc, d0


def align_depth(
    pred: Float[Tensor, "H W"],
    region: Bool[Tensor, "H W"],
    d0: float,
    radius: float,
    output: Literal["disparity", "depth"] = "disparity",
) -> Float[Tensor, "H W"]:
    """Metric z-depth from a relative prediction: its 5th/95th percentiles over ``region`` map to d0 -/+ radius.

    Returns NaN where the map gives no positive depth. A flat prediction (no spread) becomes the plane z = d0.
    """
    values = pred[region] if bool(region.any()) else pred.reshape(-1)
    lo, hi = torch.quantile(values.double(), torch.tensor([LOW_Q, HIGH_Q], dtype=torch.float64)).tolist()
    near, far = d0 - radius, d0 + radius
    p = pred.double()
    if hi - lo <= 1e-12 * max(abs(hi), abs(lo), 1e-30):
        return torch.full_like(pred, d0)
    if output == "disparity":  # high disparity = near: 1/z = a p + b through (hi, 1/near) and (lo, 1/far)
        a = (1.0 / near - 1.0 / far) / (hi - lo)
        inv = 1.0 / far + a * (p - lo)
        z = torch.where(inv > 0, 1.0 / inv.clamp_min(1e-30), torch.full_like(p, float("nan")))
    elif output == "depth":  # z = a p + b through (lo, near) and (hi, far)
        z = near + (far - near) * (p - lo) / (hi - lo)
        z = torch.where(z > 0, z, torch.full_like(p, float("nan")))
    else:
        raise ValueError(f"unknown depth output kind {output!r}; use 'disparity' or 'depth'")
    return z.float()


def back_project(
    camera: Cameras, depth: Float[Tensor, "H W"], pixels: Optional[Bool[Tensor, "H W"]] = None
) -> Float[Tensor, "N 3"]:
    """World points at z-depth ``depth`` through the centres of ``pixels`` (all by default), row-major order."""
    h, w = depth.shape
    v, u = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
    if pixels is None:
        pixels = torch.ones(h, w, dtype=torch.bool)
    fx, fy = float(camera.fx.reshape(())), float(camera.fy.reshape(()))
    cx, cy = float(camera.cx.reshape(())), float(camera.cy.reshape(()))
    z = depth[pixels].float()
    local = torch.stack([(u[pixels] - cx) / fx * z, -(v[pixels] - cy) / fy * z, -z], dim=-1)
    c2w = camera.camera_to_worlds.reshape(3, 4).float()
    return local @ c2w[:, :3].T + c2w[:, 3]


def depth_points(
    depth_model: MonocularDepth,
    cameras: Cameras,
    images: List[UInt8[Tensor, "H W 3"]],
    num_points: int,
    seed: int = 0,
    masks: Optional[List[Optional[Bool[Tensor, "H W"]]]] = None,
) -> Tuple[Float[Tensor, "N 3"], UInt8[Tensor, "N 3"]]:
    """``num_points`` coloured points (fewer if fewer pixels survive) back-projected from the input views."""
    if len(images) == 0:
        raise ValueError("depth initialisation needs at least one input view")
    centre, radius = estimate_object_bounds(cameras)
    all_xyz, all_rgb = [], []
    for i, image in enumerate(images):
        camera = cameras[i]
        disc, d0 = object_disc(camera, centre, radius)
        mask = masks[i] if masks is not None and masks[i] is not None else None
        region = mask if mask is not None and bool(mask.any()) else disc
        depth = align_depth(depth_model.predict(image), region, d0, radius, depth_model.output)
        keep = torch.isfinite(depth) & (depth >= max(d0 - 2 * radius, 0.05 * d0)) & (depth <= d0 + 2 * radius)
        if mask is not None:
            keep &= mask
        all_xyz.append(back_project(camera, depth, keep))
        all_rgb.append(image[..., :3][keep].to(torch.uint8))
    xyz, rgb = torch.cat(all_xyz), torch.cat(all_rgb)
    if xyz.shape[0] == 0:
        raise ValueError(f"depth model {depth_model.path}: no pixel got a depth near the object; check the model")
    if xyz.shape[0] > num_points:
        idx = np.sort(np.random.default_rng(seed).choice(xyz.shape[0], size=num_points, replace=False))
        xyz, rgb = xyz[torch.from_numpy(idx)], rgb[torch.from_numpy(idx)]
    return xyz, rgb
