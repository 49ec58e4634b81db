"""Splatfacto that runs anywhere: gsplat's CUDA rasterizer on GPUs, the project's torch rasterizer on CPU.

Differences from nerfstudio's ``SplatfactoModel`` (whose densification, optimizers and losses are kept):
- no hard ``.cuda()`` calls; every tensor follows the model's device;
- LPIPS is built lazily from locally cached weights (``lpips_loader``); without them training, ``ns-eval``
  and ``ns-render`` work and LPIPS is reported unavailable once;
- rendering goes through ``itergen_ns.render.rasterization`` (backend chosen per device, or forced).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Literal, Tuple, Type, Union

import torch
from gsplat.strategy import DefaultStrategy
from pytorch_msssim import SSIM
from torch.nn import Parameter

from nerfstudio.cameras.cameras import Cameras
from nerfstudio.model_components.lib_bilagrid import BilateralGrid, color_correct
from nerfstudio.models.splatfacto import (
    RGB2SH,
    SplatfactoModel,
    SplatfactoModelConfig,
    get_viewmat,
    num_sh_bases,
    random_quat_tensor,
)
from nerfstudio.utils.colors import get_color

from itergen_ns.models.lpips_loader import get_lpips
from itergen_ns.render import rasterization
from itergen_ns.render.torch_rasterizer import RenderMode


@dataclass
class IterGenSplatfactoModelConfig(SplatfactoModelConfig):
    """Splatfacto with a CPU fallback rasterizer and offline-safe metrics."""

    _target: Type = field(default_factory=lambda: IterGenSplatfactoModel)
    rasterizer_backend: Literal["auto", "gsplat", "torch"] = "auto"
    """auto: gsplat on CUDA tensors, the pure-PyTorch rasterizer otherwise."""
    lpips_net: Literal["alex", "vgg"] = "alex"
    """Backbone of the LPIPS metric/loss (weights must be in the local torch cache)."""


class IterGenSplatfactoModel(SplatfactoModel):
    """Gaussian splatting model used by both ``itergen-splatfacto`` and ``itergen``."""

    config: IterGenSplatfactoModelConfig

    def populate_modules(self):
        # Replaces splatfacto's version, whose eager torchmetrics LPIPS downloads weights and whose seed colours
        # are created with .cuda(); the Gaussians, densification strategy and metrics are otherwise the same.
        self.gauss_params = torch.nn.ParameterDict(self._initial_gaussians())
        self.camera_optimizer = self.config.camera_optimizer.setup(num_cameras=self.num_train_data, device="cpu")

        from torchmetrics.image import PeakSignalNoiseRatio

        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = SSIM(data_range=1.0, size_average=True, channel=3)
        self.step = 0
        self.crop_box = None
        if self.config.background_color == "random":
            self.background_color = torch.tensor([0.1490, 0.1647, 0.2157])  # viser's background, as splatfacto
        else:
            self.background_color = get_color(self.config.background_color)
        if self.config.use_bilateral_grid:
            self.bil_grids = BilateralGrid(
                num=self.num_train_data,
                grid_X=self.config.grid_shape[0],
                grid_Y=self.config.grid_shape[1],
                grid_W=self.config.grid_shape[2],
            )
        self.strategy = DefaultStrategy(
            prune_opa=self.config.cull_alpha_thresh,
            grow_grad2d=self.config.densify_grad_thresh,
            grow_scale3d=self.config.densify_size_thresh,
            grow_scale2d=self.config.split_screen_size,
            prune_scale3d=self.config.cull_scale_thresh,
            prune_scale2d=self.config.cull_screen_size,
            refine_scale2d_stop_iter=self.config.stop_screen_size_at,
            refine_start_iter=self.config.warmup_length,
            refine_stop_iter=self.config.stop_split_at,
            reset_every=self.config.reset_alpha_every * self.config.refine_every,
            refine_every=self.config.refine_every,
            pause_refine_after_reset=self.num_train_data + self.config.refine_every,
            absgrad=self.config.use_absgrad,
            revised_opacity=False,
            verbose=False,
        )
        self.strategy_state = self.strategy.initialize_state(scene_scale=1.0)

    def _initial_gaussians(self) -> Dict[str, Parameter]:
        """Gaussians from seed points (xyz, uint8 rgb) when given, else uniform in a cube of ``random_scale``."""
        seed = None if self.config.random_init else self.seed_points
        if seed is not None:
            means = seed[0].float().cpu()
        else:
            means = (torch.rand((self.config.num_random, 3)) - 0.5) * self.config.random_scale
        distances, _ = self.k_nearest_sklearn(means, 3)
        avg_dist = torch.from_numpy(distances).float().mean(dim=-1, keepdim=True).clamp_min(1e-6)
        num_points = means.shape[0]
        dim_sh = num_sh_bases(self.config.sh_degree)
        if seed is not None and seed[1].shape[0] > 0:
            rgb = seed[1].float().cpu() / 255.0
            shs = torch.zeros((num_points, dim_sh, 3))
            if self.config.sh_degree > 0:
                shs[:, 0, :] = RGB2SH(rgb)
            else:
                shs[:, 0, :] = torch.logit(rgb, eps=1e-10)
            features_dc, features_rest = shs[:, 0, :], shs[:, 1:, :]
        else:
            features_dc = torch.rand(num_points, 3)
            features_rest = torch.zeros((num_points, dim_sh - 1, 3))
        return {
            "means": Parameter(means),
            "scales": Parameter(torch.log(avg_dist.repeat(1, 3))),
            "quats": Parameter(random_quat_tensor(num_points)),
            "features_dc": Parameter(features_dc.contiguous()),
            "features_rest": Parameter(features_rest.contiguous()),
            "opacities": Parameter(torch.logit(0.1 * torch.ones(num_points, 1))),
        }

    def load_state_dict(self, dict, **kwargs):  # type: ignore[override]
        """Splatfacto's checkpoint loading, but the Gaussians are resized *in place*.

        nerfstudio 1.1.5's ``SplatfactoModel.load_state_dict`` replaces every Gaussian ``Parameter`` with a new
        one of the checkpoint's size; ``ns-train --load-dir`` builds the optimizers before loading, so they
        kept the old objects and a resumed run never trained again. Keeping the objects (new ``.data``) lets the
        loaded Adam state (matched by position) land on the parameters the model renders with.
        """
        self.step = 30000  # as splatfacto: full SH degree until the first training callback sets the step
        if "means" in dict:  # checkpoints of old nerfstudio versions (as splatfacto)
            for p in ["means", "scales", "quats", "features_dc", "features_rest", "opacities"]:
                dict[f"gauss_params.{p}"] = dict[p]
        num_points = dict["gauss_params.means"].shape[0]
        for param in self.gauss_params.values():
            param.data = torch.zeros((num_points, *param.shape[1:]), device=param.device, dtype=param.dtype)
        return super(SplatfactoModel, self).load_state_dict(dict, **kwargs)

    @property
    def lpips_model(self):
        """The frozen LPIPS network on this model's device, or None when its weights are not available."""
        return get_lpips(self.config.lpips_net, self.device)

    def rasterize(self, camera: Cameras, camera_to_world: torch.Tensor, render_mode: RenderMode):
        """Rasterise the (cropped) Gaussians for one camera; returns (render [1,H,W,D], alpha [1,H,W,1], info, (H, W))."""
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                return None
        else:
            crop_ids = slice(None)
        means = self.means[crop_ids]
        colors = torch.cat((self.features_dc[crop_ids][:, None, :], self.features_rest[crop_ids]), dim=1)
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        else:
            colors = torch.sigmoid(colors).squeeze(1)
            sh_degree = None

        scale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / scale)
        K = camera.get_intrinsics_matrices().to(self.device)
        W, H = int(camera.width.item()), int(camera.height.item())
        camera.rescale_output_resolution(scale)
        self.last_size = (H, W)

        render, alpha, info = rasterization(
            means=means,
            quats=self.quats[crop_ids],
            scales=torch.exp(self.scales[crop_ids]),
            opacities=torch.sigmoid(self.opacities[crop_ids]).squeeze(-1),
            colors=colors,
            viewmats=get_viewmat(camera_to_world),
            Ks=K,
            width=W,
            height=H,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
            backend=self.config.rasterizer_backend,
        )
        return render, alpha, info, (H, W)

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[torch.Tensor, List]]:  # type: ignore[override]
        """Render one camera: rgb (composited on the background), depth, accumulation, background."""
        if not isinstance(camera, Cameras):
            raise TypeError(f"get_outputs expects a Cameras object, got {type(camera).__name__}")
        if self.training:
            if camera.shape[0] != 1:
                raise ValueError("training renders one camera at a time")
            camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_world = camera.camera_to_worlds
        if self.config.rasterize_mode not in ("antialiased", "classic"):
            raise ValueError(f"Unknown rasterize_mode: {self.config.rasterize_mode}")
        render_mode: RenderMode = "RGB+ED" if (self.config.output_depth_during_training or not self.training) else "RGB"
        result = self.rasterize(camera, camera_to_world, render_mode)
        if result is None:
            return self.get_empty_outputs(int(camera.width.item()), int(camera.height.item()), self.background_color)
        render, alpha, self.info, (H, W) = result
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], H, W)
        depth = None
        if render_mode == "RGB+ED":
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(H, W, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    def get_image_metrics_and_images(
        self, outputs: Dict[str, torch.Tensor], batch: Dict[str, torch.Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, torch.Tensor]]:
        """PSNR/SSIM always, LPIPS when its weights are available locally."""
        gt_rgb = self.composite_with_background(self.get_gt_img(batch["image"]), outputs["background"])
        predicted_rgb = outputs["rgb"]
        combined_rgb = torch.cat([gt_rgb, predicted_rgb], dim=1)
        gt = gt_rgb.permute(2, 0, 1)[None]
        pred = predicted_rgb.permute(2, 0, 1)[None]
        metrics = {"psnr": float(self.psnr(gt, pred).item()), "ssim": float(self.ssim(gt, pred))}
        lpips_net = self.lpips_model
        if lpips_net is not None:
            metrics["lpips"] = float(lpips_net(gt * 2 - 1, pred * 2 - 1).mean())
        if self.config.color_corrected_metrics:
            cc = color_correct(predicted_rgb, gt_rgb).permute(2, 0, 1)[None]
            metrics["cc_psnr"] = float(self.psnr(gt, cc).item())
            metrics["cc_ssim"] = float(self.ssim(gt, cc))
        return metrics, {"img": combined_rgb}
