"""What the denoiser is conditioned on: the :class:`Conditioning` of a batch of clips and how it is built.

:func:`build_conditioning` turns raw clips (render latents, padded input views, poses) into a
:class:`Conditioning` (what ``IterGenDiffusionModel.prepare_conditioning`` returns); :class:`Conditioning` itself
applies conditioning dropout and the classifier-free-guidance branches. ``randn`` / ``rand`` draw noise on the
generator's device so a seeded run is the same on every device.

Latent conventions. Diffusion latents are ``vae.encode(x).latent_dist.mode() * scaling_factor`` (unit-ish
variance). The render condition is noised in that same space, ``z_r + render_noise * eps``, and then fed
to the UNet divided by ``scaling_factor`` -- the unscaled form SVD uses for its conditioning-image latent,
so SVD's conv_in weights see inputs of the magnitude they were trained on. Precomputed ``render_latents``
in snapshot shards must use the scaled convention (mode * scaling_factor) of the same VAE.

``added_time_ids`` = ``[fps_id, motion_bucket_id, render_noise]``: SVD's micro-conditioning slots. fps and
motion bucket stay at SVD's defaults (6, 127); the third slot, SVD's noise-augmentation strength of its
conditioning image, carries our render-noise strength, which plays exactly that role.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Dict, List, Optional, Union

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from itergen_ns.data.camera_utils import to_homogeneous
from itergen_ns.diffusion.image_features import ViewFeatures
from itergen_ns.diffusion.poses import plucker_rays, relative_poses
from itergen_ns.render.warp import nearest_input_index

if TYPE_CHECKING:
    from itergen_ns.diffusion.model import IterGenDiffusionModel


def randn(shape, generator: Optional[torch.Generator], device, dtype=torch.float32) -> Tensor:
    """Gaussian noise drawn on the generator's device (reproducible across devices), then moved."""
    gen_device = generator.device if generator is not None else torch.device(device)
    return torch.randn(shape, generator=generator, device=gen_device, dtype=torch.float32).to(device, dtype)


def rand(shape, generator: Optional[torch.Generator], device) -> Tensor:
    gen_device = generator.device if generator is not None else torch.device(device)
    return torch.rand(shape, generator=generator, device=gen_device).to(device)


@dataclass
class Conditioning:
    """Everything the denoiser sees besides the noisy latents and the timestep (batch-first tensors)."""

    render_cond: Float[Tensor, "B G C h w"]
    """Noised render latents in UNet-input units (zeros where the 3D condition is dropped)."""
    extra_maps: Optional[Float[Tensor, "B G E h w"]]
    features: ViewFeatures
    rel_poses: Float[Tensor, "B K 4 4"]
    """Input-view poses relative to the first generated frame."""
    view_mask: Bool[Tensor, "B K"]
    added_time_ids: Float[Tensor, "B 3"]
    input_map: Optional[Float[Tensor, "B G M h w"]] = None
    """Input-view latent maps per target frame in UNet-input units, concatenated on channels ("nearest_input",
    then "warped_input"; zeros where the input views are dropped)."""
    render_base: Optional[Float[Tensor, "B G C h w"]] = None
    """The identity a residual output starts from: clean scaled render latents (``render_residual``) or the
    nearest input view's latents (``input_residual``). Kept in every guidance branch (guidance then acts on the
    corrections only)."""

    def with_dropout(self, keep_render: Bool[Tensor, " B"], keep_inputs: Bool[Tensor, " B"]) -> "Conditioning":
        """Drop the 3D condition (zero render latents) and/or the input views (all slots masked, input map zeroed)
        per sample."""
        render = self.render_cond * keep_render.view(-1, 1, 1, 1, 1).to(self.render_cond.dtype)
        mask = self.view_mask & keep_inputs.view(-1, 1)
        input_map = self.input_map
        if input_map is not None:
            input_map = input_map * keep_inputs.view(-1, 1, 1, 1, 1).to(input_map.dtype)
        return dataclasses.replace(self, render_cond=render, view_mask=mask, input_map=input_map)

    def branch(self, name: str) -> "Conditioning":
        """Conditioning of one classifier-free-guidance branch: ``full``, ``no_3d`` or ``no_input``."""
        b = self.view_mask.shape[0]
        ones = torch.ones(b, dtype=torch.bool, device=self.view_mask.device)
        if name == "full":
            return self
        if name == "no_3d":
            return self.with_dropout(~ones, ones)
        if name == "no_input":
            return self.with_dropout(ones, ~ones)
        raise ValueError(f"unknown guidance branch {name!r}")

    @staticmethod
    def cat(items: list["Conditioning"]) -> "Conditioning":
        """Concatenate along the batch dimension (one UNet call for all guidance branches)."""

        def optional(name: str) -> Optional[Tensor]:
            first = getattr(items[0], name)
            return None if first is None else torch.cat([getattr(c, name) for c in items])

        return Conditioning(
            render_cond=torch.cat([c.render_cond for c in items]),
            extra_maps=optional("extra_maps"),
            features=ViewFeatures(
                clip=torch.cat([c.features.clip for c in items]),
                dino_cls=torch.cat([c.features.dino_cls for c in items]),
                dino_patch=torch.cat([c.features.dino_patch for c in items]),
            ),
            rel_poses=torch.cat([c.rel_poses for c in items]),
            view_mask=torch.cat([c.view_mask for c in items]),
            added_time_ids=torch.cat([c.added_time_ids for c in items]),
            input_map=optional("input_map"),
            render_base=optional("render_base"),
        )

    def as_kwargs(self) -> Dict[str, Optional[Tensor]]:
        """Plain tensors for :meth:`IterGenDenoiser.forward` (DDP-friendly)."""
        return dict(
            render_cond=self.render_cond,
            extra_maps=self.extra_maps,
            clip_features=self.features.clip,
            dino_cls=self.features.dino_cls,
            dino_patch=self.features.dino_patch,
            rel_poses=self.rel_poses,
            view_mask=self.view_mask,
            added_time_ids=self.added_time_ids,
            input_map=self.input_map,
            render_base=self.render_base,
        )


def nearest_input_latents(
    input_latents: Float[Tensor, "B K C h w"],
    input_mask: Bool[Tensor, "B K"],
    input_poses: Float[Tensor, "B K 4 4"],
    target_poses: Float[Tensor, "B G 4 4"],
) -> Float[Tensor, "B G C h w"]:
    """Per target frame, the latent of the valid input view whose camera centre is nearest (Euclidean)."""
    idx = nearest_input_index(input_poses, target_poses.to(input_latents.device), input_mask)  # B G
    gather = idx[..., None, None, None].expand(-1, -1, *input_latents.shape[2:])
    return torch.gather(input_latents, 1, gather)


def build_conditioning(
    model: "IterGenDiffusionModel",
    render_latents: Float[Tensor, "B G C h w"],
    input_images: Float[Tensor, "B K 3 H W"],
    input_mask: Bool[Tensor, "B K"],
    input_poses: Float[Tensor, "B K 4 4"],
    target_poses: Float[Tensor, "B G 4 4"],
    render_noise: Union[float, Float[Tensor, " B"]],
    generator: Optional[torch.Generator],
    target_intrinsics: Optional[Float[Tensor, "B G 4"]] = None,
    input_latents: Optional[Float[Tensor, "B K C h w"]] = None,
    warped_latents: Optional[Float[Tensor, "B G C h w"]] = None,
) -> Conditioning:
    """Build the full (undropped) conditioning of a batch of clips.

    ``render_latents`` are scaled diffusion latents of the renders of the current 3D state at the target
    poses; ``input_*`` are padded to ``max_input_views`` slots; poses are 4x4 (or 3x4) OpenGL c2w;
    ``target_intrinsics`` (fx, fy, cx, cy at model resolution) are needed only for Plücker extra maps;
    ``input_latents`` (scaled latents of the input images, e.g. from a training cache) spare encoding them
    for the "nearest_input" map; ``warped_latents`` (scaled latents of the warp composites,
    :func:`itergen_ns.render.warp.warp_nearest_input`) are required for the "warped_input" map.
    """
    device = model.device
    b, g = render_latents.shape[:2]
    if input_mask.shape[1] != model.config.max_input_views:
        raise ValueError(f"expected {model.config.max_input_views} input slots, got {input_mask.shape[1]}")
    if not torch.is_tensor(render_noise):
        render_noise = torch.full((b,), float(render_noise))
    render_noise = render_noise.to(device, torch.float32)
    noise = randn(render_latents.shape, generator, device)
    z = render_latents.to(device, torch.float32) + render_noise.view(-1, 1, 1, 1, 1) * noise
    render_cond = z / model.scaling_factor
    target_poses = to_homogeneous(target_poses.to(device, torch.float32))
    rel = relative_poses(to_homogeneous(input_poses.to(device, torch.float32)), target_poses[:, 0])
    mask = input_mask.to(device)
    rel = torch.where(mask[..., None, None], rel, torch.eye(4, device=device).expand_as(rel))
    features = model.image_encoder.encode_views(input_images.to(device), mask)
    extras = None
    if "plucker" in model.config.extra_maps:
        if target_intrinsics is None:
            raise ValueError("extra_maps=('plucker',) needs target_intrinsics (fx, fy, cx, cy at model resolution)")
        rel_targets = relative_poses(target_poses, target_poses[:, 0])
        extras = plucker_rays(
            rel_targets, target_intrinsics.to(device, torch.float32), (model.height, model.width), model.latent_hw
        )
    maps: List[Tensor] = []
    nearest: Optional[Tensor] = None
    if "nearest_input" in model.config.extra_maps or model.config.output_parameterization == "input_residual":
        if input_latents is None:
            k = input_images.shape[1]
            flat = model.resize(input_images.flatten(0, 1).to(device).float())
            input_latents = model.encode_latents(flat).reshape(b, k, *render_latents.shape[2:])
        nearest = nearest_input_latents(input_latents.to(device, torch.float32), mask, input_poses, target_poses)
    if "nearest_input" in model.config.extra_maps:
        assert nearest is not None
        maps.append(nearest)
    if "warped_input" in model.config.extra_maps:
        if warped_latents is None:
            raise ValueError("extra_maps 'warped_input' needs warped_latents (render depths at sampling time)")
        maps.append(warped_latents.to(device, torch.float32))
    input_map = torch.cat(maps, dim=2) / model.scaling_factor if maps else None
    time_ids = torch.stack(
        [
            torch.full((b,), float(model.config.fps_id), device=device),
            torch.full((b,), float(model.config.motion_bucket_id), device=device),
            render_noise,
        ],
        dim=1,
    )
    render_base = nearest if model.config.output_parameterization == "input_residual" else render_latents
    assert render_base is not None  # nearest is computed for input_residual above
    render_base = render_base.to(device, torch.float32)
    return Conditioning(render_cond, extras, features, rel, mask, time_ids, input_map, render_base)
