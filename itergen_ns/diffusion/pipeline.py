"""Sampling pipeline: render-conditioned video generation with two-scale classifier-free guidance.

Usage::

    pipe = IterGenVideoPipeline.from_pretrained("runs/diffusion/latest").to("cuda")
    images = pipe(renders, input_images, input_poses, target_poses, num_inference_steps=25,
                  guidance_3d=1.0, guidance_input=2.0, render_noise=0.1, generator=torch.Generator().manual_seed(0))

Sampler: diffusers ``EulerDiscreteScheduler`` in SVD's EDM configuration (Karras sigmas, v-prediction,
continuous timesteps). Guidance branches are batched into one UNet call per step; see
:mod:`itergen_ns.diffusion.guidance` for the combination formula.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from itergen_ns.diffusion.guidance import combine_guidance, guidance_branches
from itergen_ns.diffusion.conditioning import Conditioning, randn
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.data.camera_utils import to_homogeneous as _hom


class IterGenVideoPipeline:
    """P_theta sampler over an :class:`IterGenDiffusionModel` (models / scheduler / pipeline kept apart)."""

    def __init__(self, model: IterGenDiffusionModel, progress: bool = False):
        self.model = model
        self.progress = progress

    @classmethod
    def from_pretrained(
        cls, path: Union[str, Path], allow_download: bool = False, torch_dtype: Optional[torch.dtype] = None
    ) -> "IterGenVideoPipeline":
        return cls(IterGenDiffusionModel.from_pretrained(path, allow_download=allow_download, torch_dtype=torch_dtype))

    def save_pretrained(self, path: Union[str, Path], **kwargs) -> Path:
        return self.model.save_pretrained(path, **kwargs)

    def to(self, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None):
        """Move the model; with fp16 the VAE stays fp32 when its config asks for upcasting (as in diffusers)."""
        self.model.to(device=device)
        if dtype is not None:
            self.model.denoiser.to(dtype=dtype)
            self.model.image_encoder.to(dtype=dtype)
            if not (dtype == torch.float16 and getattr(self.model.vae.config, "force_upcast", False)):
                self.model.vae.to(dtype=dtype)
        return self

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def height(self) -> int:
        return self.model.height

    @property
    def width(self) -> int:
        return self.model.width

    @property
    def num_frames(self) -> int:
        return self.model.num_frames

    @torch.no_grad()
    def __call__(
        self,
        renders: Float[Tensor, "G 3 H W"],
        input_images: Float[Tensor, "C 3 Hi Wi"],
        input_poses: Float[Tensor, "C 4 4"],
        target_poses: Float[Tensor, "G 4 4"],
        num_inference_steps: Optional[int] = None,
        guidance_3d: Optional[float] = None,
        guidance_input: Optional[float] = None,
        render_noise: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
        target_intrinsics: Optional[Float[Tensor, "G 4"]] = None,
        output_type: str = "pt",
        start_sigma: Optional[float] = None,
        warped_inputs: Optional[Float[Tensor, "G 3 H W"]] = None,
    ) -> Float[Tensor, "G 3 H W"]:
        """Generate G frames at ``target_poses`` given renders of the current 3D state there and C input views.

        ``renders`` and ``input_images`` are float RGB in [0, 1]; poses are OpenGL camera-to-world (4x4 or
        3x4). Renders are resized to the model resolution and the result back to the renders' resolution.
        ``target_intrinsics`` (fx, fy, cx, cy in pixels of ``renders``) are required only for Plücker maps;
        ``warped_inputs`` (the renders with the nearest input warped in through the render depth,
        :func:`itergen_ns.render.warp.warp_nearest_input`) only for models with the "warped_input" map.
        G may differ from ``num_frames`` (the temporal layers take any length; quality is best at the trained
        length). Defaults for steps / scales / render noise come from the model's :class:`SamplingConfig`. Returns images in [0, 1]
        on the renders' device, or the final latents when ``output_type="latent"``.
        """
        model, cfg = self.model, self.model.config
        sampling = cfg.sampling.with_overrides(
            num_inference_steps=num_inference_steps,
            guidance_3d=guidance_3d,
            guidance_input=guidance_input,
            render_noise=render_noise,
            start_sigma=start_sigma,
        )
        g3, gi = float(sampling.guidance_3d), float(sampling.guidance_input)
        self._check_counts(renders, input_images, input_poses, target_poses)
        out_hw = tuple(renders.shape[-2:])
        render_latents, cond = self._conditioning(
            renders, input_images, input_poses, target_poses, float(sampling.render_noise), generator,
            self._model_intrinsics(target_intrinsics, out_hw), warped_inputs,
        )  # fmt: skip
        branches = guidance_branches(g3, gi)
        batched = Conditioning.cat([cond.branch(name) for name in branches]).as_kwargs()
        scheduler = model.make_scheduler()
        scheduler.set_timesteps(sampling.num_inference_steps, device=self.device)
        latents, timesteps = self._initial_latents(scheduler, render_latents, sampling.start_sigma, generator)
        for t in tqdm(timesteps, disable=not self.progress, desc="sampling", leave=False):
            x_in = scheduler.scale_model_input(latents, t)
            timestep = t.reshape(1).expand(len(branches)).float()
            pred = model.denoiser(x_in.repeat(len(branches), 1, 1, 1, 1), timestep, **batched).float()
            preds = dict(zip(branches, pred.chunk(len(branches))))
            v = combine_guidance(preds["full"], preds.get("no_3d"), preds.get("no_input"), g3, gi)
            latents = scheduler.step(v, t, latents).prev_sample
        if output_type == "latent":
            return latents[0]
        images = model.decode_latents(latents)[0]
        if images.shape[-2:] != out_hw:
            images = F.interpolate(images, size=out_hw, mode="bilinear", antialias=True).clamp(0, 1)
        return images.to(renders.device)

    def _check_counts(self, renders: Tensor, input_images: Tensor, input_poses: Tensor, target_poses: Tensor) -> None:
        g, c, k = renders.shape[0], input_images.shape[0], self.model.config.max_input_views
        if c < 1 or c > k:
            raise ValueError(f"got {c} input views; this model takes 1..{k}")
        if target_poses.shape[0] != g or input_poses.shape[0] != c:
            raise ValueError(
                f"pose counts ({input_poses.shape[0]} input, {target_poses.shape[0]} target) must match images "
                f"({c} inputs, {g} renders)"
            )

    def _model_intrinsics(self, target_intrinsics: Optional[Tensor], out_hw: Tuple[int, ...]) -> Optional[Tensor]:
        """(fx, fy, cx, cy) in pixels of the renders -> in pixels of the model resolution, batched [1, G, 4]."""
        if target_intrinsics is None:
            return None
        cfg = self.model.config
        sx, sy = cfg.width / out_hw[1], cfg.height / out_hw[0]
        scale = torch.tensor([sx, sy, sx, sy], device=target_intrinsics.device, dtype=torch.float32)
        return (target_intrinsics.float() * scale)[None]

    def _conditioning(
        self,
        renders: Tensor,
        input_images: Tensor,
        input_poses: Tensor,
        target_poses: Tensor,
        noise_level: float,
        generator: Optional[torch.Generator],
        intrinsics: Optional[Tensor],
        warped_inputs: Optional[Tensor],
    ) -> Tuple[Tensor, Conditioning]:
        """Render latents [1, G, C, h, w] and the full conditioning of one clip (inputs padded to the model's
        ``max_input_views`` slots)."""
        model, device = self.model, self.device
        k, c = model.config.max_input_views, input_images.shape[0]
        render_latents = model.encode_latents(model.resize(renders.to(device).float()))[None]
        warped_latents = None
        if model.config.needs_depth:
            if warped_inputs is None or warped_inputs.shape != renders.shape:
                raise ValueError(
                    "this model conditions on the warped input view (extra_maps 'warped_input'): pass "
                    f"warped_inputs shaped like the renders {tuple(renders.shape)} (see itergen_ns.render.warp)"
                )
            warped_latents = model.encode_latents(model.resize(warped_inputs.to(device).float()))[None]
        padded = torch.zeros(1, k, 3, *input_images.shape[-2:], device=device)
        padded[0, :c] = input_images.to(device).float()
        poses = torch.eye(4, device=device).repeat(1, k, 1, 1)
        poses[0, :c] = _hom(input_poses.to(device).float())
        mask = torch.zeros(1, k, dtype=torch.bool, device=device)
        mask[0, :c] = True
        cond = model.prepare_conditioning(
            render_latents,
            padded,
            mask,
            poses,
            _hom(target_poses.to(device).float())[None],
            noise_level,
            generator,
            intrinsics,
            warped_latents=warped_latents,
        )
        return render_latents, cond

    def _initial_latents(
        self, scheduler, render_latents: Tensor, start_sigma: Optional[float], generator: Optional[torch.Generator]
    ) -> Tuple[Tensor, Tensor]:
        """Pure noise at the scheduler's first level (the paper), or SDEdit: the render latent noised to the first
        level <= ``start_sigma``; returns the latents and the timesteps left to run."""
        timesteps = scheduler.timesteps
        noise = randn(render_latents.shape, generator, self.device)
        if start_sigma is None:
            return noise * scheduler.init_noise_sigma, timesteps
        sigmas = scheduler.sigmas[:-1].to(self.device)
        below = (sigmas <= start_sigma).nonzero()
        start = int(below[0]) if len(below) else len(sigmas) - 1
        scheduler.set_begin_index(start)
        return render_latents.to(self.device) + float(sigmas[start]) * noise, timesteps[start:]
