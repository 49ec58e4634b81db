"""Image metrics (PSNR, SSIM, optional LPIPS) and evaluation of a trained pipeline on its held-out frames."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Bool, Float
from pytorch_msssim import ssim as ms_ssim
from torch import Tensor

from itergen_ns.models.lpips_loader import get_lpips


def psnr(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> float:
    """PSNR in dB for images in [0, 1]; +inf for identical images."""
    mse = torch.mean((pred.float() - gt.float()) ** 2).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def ssim(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> float:
    """SSIM (11x11 Gaussian window) for images in [0, 1]; small images use a smaller window."""
    win = 11 if min(pred.shape[:2]) >= 32 else 7
    a = pred.float().permute(2, 0, 1)[None]
    b = gt.float().permute(2, 0, 1)[None]
    return float(ms_ssim(a, b, data_range=1.0, size_average=True, win_size=win))


def lpips(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> Optional[float]:
    """LPIPS (AlexNet) when its weights are cached locally, else None."""
    net = get_lpips("alex", pred.device)
    if net is None:
        return None
    a = pred.float().permute(2, 0, 1)[None] * 2 - 1
    b = gt.float().permute(2, 0, 1)[None] * 2 - 1
    with torch.no_grad():
        return float(net(a, b).mean())


def masked_psnr(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"], mask: Bool[Tensor, "H W"]) -> float:
    """PSNR over the object's pixels only (MSE averaged over ``mask``); NaN when the mask is empty.

    Unlike ``itergen eval --use-masks`` (background set to white in both images, then PSNR of the whole image),
    this does not grow with the share of background in the frame."""
    m = mask.bool()
    if not bool(m.any()):
        return math.nan
    mse = torch.mean((pred.float()[m] - gt.float()[m]) ** 2).item()
    return math.inf if mse == 0 else -10.0 * math.log10(mse)


def silhouette_iou(accumulation: Float[Tensor, "H W"], mask: Bool[Tensor, "H W"], threshold: float = 0.5) -> float:
    """IoU of the rendered silhouette (accumulated opacity > ``threshold``) and the ground-truth object mask;
    1.0 when both are empty."""
    pred = accumulation.float() > threshold
    gt = mask.bool()
    union = int((pred | gt).sum())
    return 1.0 if union == 0 else int((pred & gt).sum()) / union


def image_metrics(pred: Float[Tensor, "H W 3"], gt: Float[Tensor, "H W 3"]) -> Dict[str, float]:
    out = {"psnr": psnr(pred, gt), "ssim": ssim(pred, gt)}
    value = lpips(pred, gt)
    if value is not None:
        out["lpips"] = value
    return out


def mean_metrics(per_frame: List[Dict[str, float]]) -> Dict[str, float]:
    """Mean of each metric over frames (PSNR averaged in dB, as nerfstudio and the paper do)."""
    keys = sorted({k for m in per_frame for k in m})
    return {k: float(np.mean([m[k] for m in per_frame if k in m])) for k in keys}


@dataclass
class PipelineEval:
    """Per-frame metrics and images of a pipeline's eval split (images uint8 [H, W, 3])."""

    per_frame: List[Dict[str, float]]
    renders: List[np.ndarray] = field(default_factory=list)
    targets: List[np.ndarray] = field(default_factory=list)

    @property
    def mean(self) -> Dict[str, float]:
        return mean_metrics(self.per_frame)


@torch.no_grad()
def evaluate_pipeline(pipeline, keep_images: bool = True) -> PipelineEval:
    """Render every eval frame of ``pipeline`` and score it against its ground truth."""
    model = pipeline.model
    model.eval()
    result = PipelineEval(per_frame=[])
    for camera, batch in pipeline.datamanager.fixed_indices_eval_dataloader:
        outputs = model.get_outputs_for_camera(camera)
        gt = model.composite_with_background(model.get_gt_img(batch["image"]), outputs["background"])
        pred = outputs["rgb"].clamp(0, 1)
        result.per_frame.append(image_metrics(pred, gt[..., :3]))
        if keep_images:
            result.renders.append((pred.cpu().numpy() * 255).round().astype(np.uint8))
            result.targets.append((gt[..., :3].cpu().numpy() * 255).round().astype(np.uint8))
    model.train()
    return result


def object_sphere(
    dataparser_outputs, scene_dir=None, margin: float = 1.1
) -> Optional[Tuple[Float[Tensor, "3"], float]]:
    """(centre, radius) of the object's bounding sphere in the run's normalised coordinates, from the
    procedural scene's ground truth (``itergen_scene`` in transforms.json); None for other scenes.

    Scoring-time only (the ground truth is what the silhouette is compared against anyway)."""
    import json
    from pathlib import Path

    if scene_dir is None:
        return None
    path = Path(scene_dir) / "transforms.json"
    if not path.is_file():
        return None
    meta = json.loads(path.read_text()).get("itergen_scene")
    if not meta or "object_center" not in meta:
        return None
    transform = dataparser_outputs.dataparser_transform.float()  # [3, 4]: p' = scale * (R p + t)
    scale = float(dataparser_outputs.dataparser_scale)
    centre = torch.tensor(meta["object_center"], dtype=torch.float32)
    centre = scale * (transform[:, :3] @ centre + transform[:, 3])
    rot_scale = float(torch.linalg.det(transform[:, :3]).abs() ** (1.0 / 3.0))
    return centre, margin * scale * rot_scale * float(meta["object_radius"])


@torch.no_grad()
def object_accumulation(model, cameras, centre: Float[Tensor, "3"], radius: float) -> np.ndarray:
    """Accumulated opacity [F, H, W] of the Gaussians whose centres lie in the sphere (centre, radius) only.

    The full model's accumulation is ~1 everywhere (backdrop Gaussians on the background shell cover every
    pixel), so the silhouette is rendered from the object region alone, by hiding the other Gaussians."""
    from itergen_ns.models.rendering import render_all_frames

    opacities = model.gauss_params["opacities"]
    saved = opacities.data.clone()
    outside = (model.gauss_params["means"].data - centre.to(saved.device)).norm(dim=-1) > radius
    try:
        opacities.data[outside] = -1e4  # logit: opacity 0
        _, alpha = render_all_frames(model, cameras, accumulation=True)
    finally:
        opacities.data.copy_(saved)
    return alpha
