"""P_theta(x_g | z_t, x_c, c_g): the render-conditioned video diffusion model, its parts, and its training loss.

* :class:`IterGenDenoiser` (trainable): ``UNetSpatioTemporalConditionModel`` + :class:`ViewTokenizer`;
  maps (scaled noisy latents, timestep, conditioning) to a v-prediction. This is the module that
  ``accelerate`` wraps for (distributed) training.
* :class:`IterGenDiffusionModel`: the denoiser plus the frozen VAE and image encoders; turns raw clips
  (renders, input views, poses) into :class:`Conditioning` and computes the training loss.

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

import copy
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderTiny, EulerDiscreteScheduler
from jaxtyping import Bool, Float
from torch import Tensor, nn
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

from itergen_ns.diffusion import edm
from itergen_ns.render.warp import nearest_input_index
from itergen_ns.diffusion.configs import (
    RESIDUAL_PARAMETERIZATIONS,
    TAEF2_SOURCE,
    ComponentSource,
    DiffusionModelConfig,
    config_from_dict,
    config_to_dict,
)
from itergen_ns.diffusion.fileio import atomic_directory
from itergen_ns.diffusion.image_features import ImageFeatureEncoder, ViewFeatures
from itergen_ns.diffusion.poses import plucker_rays, relative_poses, to_homogeneous
from itergen_ns.diffusion.unet import build_unet
from itergen_ns.diffusion.view_tokens import ViewTokenizer
from itergen_ns.diffusion.weights import MissingWeightsError, load_pretrained

MODEL_FILE = "itergen_diffusion.json"
MODEL_FORMAT = "itergen-diffusion"
MODEL_FORMAT_VERSION = 2  # 2: SamplingConfig + ClipStatistics in the config
SUBFOLDERS = {"unet": "unet", "view_tokenizer": "view_tokenizer", "vae": "vae", "clip": "image_encoder", "dino": "dino"}

VAE = Union[AutoencoderKLTemporalDecoder, AutoencoderKL, AutoencoderTiny]


def read_model_meta(path: Union[str, Path]) -> Dict:
    """The JSON index of a model directory written by ``save_pretrained`` (config, scheduler), checked."""
    meta_file = Path(path) / MODEL_FILE
    if not meta_file.exists():
        raise MissingWeightsError(
            f"{meta_file} not found: '{path}' is not an itergen diffusion checkpoint (save_pretrained output, "
            f"e.g. runs/diffusion/latest)"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != MODEL_FORMAT or meta.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r} v{meta.get('version')!r} not supported")
    return meta


def read_model_config(path: Union[str, Path]) -> DiffusionModelConfig:
    """A saved model's config (with its SamplingConfig and ClipStatistics) without loading any weights."""
    return config_from_dict(read_model_meta(path)["config"])


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

    def with_dropout(self, keep_render: Bool[Tensor, "B"], keep_inputs: Bool[Tensor, "B"]) -> "Conditioning":
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


class IterGenDenoiser(nn.Module):
    """Trainable network: UNet over ``[c_in * x | render | extras | input map]`` cross-attending to view tokens.

    ``parameterization="render_residual"`` turns the UNet output F into the v-prediction whose denoised
    estimate is ``render_base + F`` (so the scheduler, the guidance and the v loss are unchanged).
    """

    def __init__(self, unet, view_tokenizer: ViewTokenizer, parameterization: str = "v"):
        super().__init__()
        self.unet = unet
        self.view_tokenizer = view_tokenizer
        self.parameterization = parameterization

    def forward(
        self,
        sample: Float[Tensor, "B G C h w"],
        timestep: Float[Tensor, "B"],
        render_cond: Float[Tensor, "B G C h w"],
        extra_maps: Optional[Float[Tensor, "B G E h w"]],
        clip_features: Float[Tensor, "B K Dc"],
        dino_cls: Float[Tensor, "B K Dd"],
        dino_patch: Float[Tensor, "B K Dd"],
        rel_poses: Float[Tensor, "B K 4 4"],
        view_mask: Bool[Tensor, "B K"],
        added_time_ids: Float[Tensor, "B 3"],
        input_map: Optional[Float[Tensor, "B G C h w"]] = None,
        render_base: Optional[Float[Tensor, "B G C h w"]] = None,
    ) -> Float[Tensor, "B G C h w"]:
        """v-prediction for ``sample`` already scaled by ``c_in`` at timestep ``c_noise(sigma)``."""
        dtype = self.unet.conv_in.weight.dtype
        parts = [sample, render_cond] + [m for m in (extra_maps, input_map) if m is not None]
        unet_in = torch.cat([p.to(dtype) for p in parts], dim=2)
        tokens = self.view_tokenizer(ViewFeatures(clip_features, dino_cls, dino_patch), rel_poses, view_mask)
        out = self.unet(
            unet_in,
            timestep.to(sample.device, torch.float32),
            encoder_hidden_states=tokens.to(dtype),
            added_time_ids=added_time_ids.to(dtype),
            return_dict=False,
        )[0]
        if self.parameterization in RESIDUAL_PARAMETERIZATIONS:
            if render_base is None:
                raise ValueError(f"the {self.parameterization} parameterization needs render_base (its identity)")
            out = residual_to_v(out.float(), sample.float(), timestep, render_base.float())
        return out


def residual_to_v(
    correction: Float[Tensor, "B *S"], scaled_sample: Float[Tensor, "B *S"], timestep: Tensor, base: Tensor
) -> Float[Tensor, "B *S"]:
    """The v-prediction whose EDM denoised estimate is ``base + correction``.

    ``scaled_sample = c_in(sigma) * x`` and ``timestep = c_noise(sigma) = 0.25 ln sigma`` as the UNet sees them.
    """
    sigma = (4.0 * timestep.float().to(scaled_sample.device)).exp().reshape(-1, *([1] * (scaled_sample.ndim - 1)))
    x = scaled_sample / edm.c_in(sigma)
    return edm.v_target(base + correction, x, sigma.reshape(-1))


class IterGenDiffusionModel(nn.Module):
    """The full model: trainable denoiser + frozen VAE and image encoders + the scheduler's config."""

    def __init__(
        self,
        config: DiffusionModelConfig,
        denoiser: IterGenDenoiser,
        vae: VAE,
        image_encoder: ImageFeatureEncoder,
        scheduler_config: Dict,
    ):
        super().__init__()
        self.config = config
        self.denoiser = denoiser
        self.vae = vae
        self.image_encoder = image_encoder
        self.scheduler_config = dict(scheduler_config)
        self.vae.requires_grad_(False)
        self.vae.eval()

    # ----------------------------------------------------------------------------------------- construction
    @classmethod
    def from_config(cls, config: DiffusionModelConfig) -> "IterGenDiffusionModel":
        """Build every component: pretrained where the config names weights, seeded random init otherwise."""
        config.validate()
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(config.seed)
            unet = build_unet(config.unet, config.unet_in_channels, config.allow_download, config.latent_channels)
            if config.output_parameterization in RESIDUAL_PARAMETERIZATIONS and config.unet.pretrained is None:
                nn.init.zeros_(unet.conv_out.weight)  # untrained model = identity of the render / input
                nn.init.zeros_(unet.conv_out.bias)
            vae = _build_vae(config.vae, config.allow_download)
            clip = _build_clip(config.clip, config.allow_download)
            dino = _build_dino(config.dino, config.allow_download)
            encoder = _image_encoder(config, clip, dino)
            tokenizer = ViewTokenizer(
                clip_dim=encoder.clip_dim,
                dino_dim=encoder.dino_dim,
                token_dim=_cross_attention_dim(unet),
                max_views=config.max_input_views,
                pose_num_freqs=config.pose_num_freqs,
                pose_hidden_dim=config.pose_hidden_dim,
                pose_translation_scale=config.pose_translation_scale,
            )
        scheduler_config = _scheduler_config(config.scheduler, config.allow_download)
        denoiser = IterGenDenoiser(unet, tokenizer, config.output_parameterization)
        return cls(config, denoiser, vae, encoder, scheduler_config)

    @classmethod
    def from_pretrained(
        cls, path: Union[str, Path], allow_download: bool = False, torch_dtype: Optional[torch.dtype] = None
    ) -> "IterGenDiffusionModel":
        """Load a directory written by :meth:`save_pretrained`; components it does not hold come from their sources."""
        path = Path(path)
        meta = read_model_meta(path)
        config = config_from_dict(meta["config"])
        config.allow_download = allow_download
        local = {key: (path / sub).is_dir() for key, sub in SUBFOLDERS.items()}

        def source(key: str, original: ComponentSource) -> ComponentSource:
            if local[key]:
                return ComponentSource(pretrained=str(path), subfolder=SUBFOLDERS[key])
            if original.pretrained is None:
                raise MissingWeightsError(f"{path}: has no {SUBFOLDERS[key]}/ and the config names no source for it")
            return original

        unet = build_unet(source("unet", config.unet), config.unet_in_channels, allow_download, config.latent_channels)
        vae = _build_vae(source("vae", config.vae), allow_download)
        clip = _build_clip(source("clip", config.clip), allow_download)
        dino = _build_dino(source("dino", config.dino), allow_download)
        encoder = _image_encoder(config, clip, dino)
        tokenizer = load_pretrained(
            "view tokenizer",
            ViewTokenizer.from_pretrained,
            ComponentSource(pretrained=str(path), subfolder=SUBFOLDERS["view_tokenizer"]),
            allow_download=False,
        )
        scheduler_config = meta.get("scheduler") or _scheduler_config(config.scheduler, allow_download)
        denoiser = IterGenDenoiser(unet, tokenizer, config.output_parameterization)
        model = cls(config, denoiser, vae, encoder, scheduler_config).eval()
        # Weights saved in fp16 (the shipped checkpoint) load as float32 unless a dtype is asked for.
        model.to(torch_dtype if torch_dtype is not None else torch.float32)
        return model

    def save_pretrained(
        self,
        path: Union[str, Path],
        include_frozen: Literal["auto", "all", "none"] = "auto",
        dtype: Optional[torch.dtype] = None,
    ) -> Path:
        """Write config JSON + safetensors per component, atomically (temp dir -> rename).

        ``dtype`` (e.g. torch.float16 for a shipped checkpoint) writes a converted copy; this model is unchanged.

        Trainable parts (UNet, view tokenizer) are always written. Frozen parts (VAE, CLIP, DINOv2) are written
        when ``include_frozen="all"``, or with ``"auto"`` only when they have no pretrained source to reload
        them from (random init or fitted); otherwise the saved config references their source.
        """
        path = Path(path)
        if dtype is not None:
            return copy.deepcopy(self).to(dtype).save_pretrained(path, include_frozen)
        frozen = {"vae": self.vae, "clip": self.image_encoder.clip, "dino": self.image_encoder.dino}
        config = dataclasses.replace(self.config)
        with atomic_directory(path) as tmp:
            self.denoiser.unet.save_pretrained(tmp / SUBFOLDERS["unet"])
            self.denoiser.view_tokenizer.save_pretrained(tmp / SUBFOLDERS["view_tokenizer"])
            for key, module in frozen.items():
                source: ComponentSource = getattr(config, key)
                if include_frozen == "all" or (include_frozen == "auto" and source.pretrained is None):
                    module.save_pretrained(tmp / SUBFOLDERS[key])
            meta = {
                "format": MODEL_FORMAT,
                "version": MODEL_FORMAT_VERSION,
                "config": config_to_dict(config),
                "scheduler": self.scheduler_config,
            }
            (tmp / MODEL_FILE).write_text(json.dumps(meta, indent=2))
        return path

    def make_scheduler(self) -> EulerDiscreteScheduler:
        """A fresh (stateless-to-share) Euler/EDM scheduler; one per sampling call keeps threads independent."""
        return EulerDiscreteScheduler.from_config(self.scheduler_config)

    # ------------------------------------------------------------------------------------------ properties
    @property
    def height(self) -> int:
        return self.config.height

    @property
    def width(self) -> int:
        return self.config.width

    @property
    def num_frames(self) -> int:
        return self.config.num_frames

    @property
    def vae_scale_factor(self) -> int:
        vae_cfg = self.vae.config
        blocks = getattr(vae_cfg, "block_out_channels", None) or vae_cfg.encoder_block_out_channels
        return 2 ** (len(blocks) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.vae.config.latent_channels)

    @property
    def latent_hw(self) -> Tuple[int, int]:
        return self.height // self.vae_scale_factor, self.width // self.vae_scale_factor

    @property
    def scaling_factor(self) -> float:
        return float(self.vae.config.scaling_factor)

    @property
    def device(self) -> torch.device:
        return self.denoiser.unet.conv_in.weight.device

    # ---------------------------------------------------------------------------------------- VAE helpers
    def resize(self, images: Float[Tensor, "N 3 H W"]) -> Float[Tensor, "N 3 h w"]:
        """Resize to the model resolution (antialiased bilinear) when needed."""
        if images.shape[-2:] == (self.height, self.width):
            return images
        return F.interpolate(images.float(), size=(self.height, self.width), mode="bilinear", antialias=True)

    @torch.no_grad()
    def encode_latents(self, images: Float[Tensor, "N 3 H W"], chunk: int = 32) -> Float[Tensor, "N C h w"]:
        """Images in [0, 1] at model resolution -> scaled diffusion latents (posterior mode, or the tiny
        autoencoder's deterministic latents, times scaling_factor)."""
        dtype = self.vae.dtype
        out = []
        for i in range(0, images.shape[0], chunk):
            x = images[i : i + chunk].to(self.vae.device, dtype) * 2.0 - 1.0
            encoded = self.vae.encode(x)
            z = encoded.latents if isinstance(self.vae, AutoencoderTiny) else encoded.latent_dist.mode()
            out.append(z.float())
        return torch.cat(out) * self.scaling_factor

    @torch.no_grad()
    def decode_latents(self, latents: Float[Tensor, "B G C h w"]) -> Float[Tensor, "B G 3 H W"]:
        """Scaled latents -> images in [0, 1]; the temporal decoder sees each clip as one video."""
        b, g = latents.shape[:2]
        z = (latents.flatten(0, 1) / self.scaling_factor).to(self.vae.device, self.vae.dtype)
        clips = []
        for i in range(b):
            zi = z[i * g : (i + 1) * g]
            if isinstance(self.vae, AutoencoderKLTemporalDecoder):
                clips.append(self.vae.decode(zi, num_frames=g).sample)
            else:
                clips.append(self.vae.decode(zi).sample)
        images = torch.cat(clips).float()
        return ((images + 1.0) / 2.0).clamp(0, 1).reshape(b, g, *images.shape[1:])

    # ------------------------------------------------------------------------------------- conditioning
    def prepare_conditioning(
        self,
        render_latents: Float[Tensor, "B G C h w"],
        input_images: Float[Tensor, "B K 3 H W"],
        input_mask: Bool[Tensor, "B K"],
        input_poses: Float[Tensor, "B K 4 4"],
        target_poses: Float[Tensor, "B G 4 4"],
        render_noise: Union[float, Float[Tensor, "B"]],
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
        device = self.device
        b, g = render_latents.shape[:2]
        if input_mask.shape[1] != self.config.max_input_views:
            raise ValueError(f"expected {self.config.max_input_views} input slots, got {input_mask.shape[1]}")
        if not torch.is_tensor(render_noise):
            render_noise = torch.full((b,), float(render_noise))
        render_noise = render_noise.to(device, torch.float32)
        noise = randn(render_latents.shape, generator, device)
        z = render_latents.to(device, torch.float32) + render_noise.view(-1, 1, 1, 1, 1) * noise
        render_cond = z / self.scaling_factor
        target_poses = to_homogeneous(target_poses.to(device, torch.float32))
        rel = relative_poses(to_homogeneous(input_poses.to(device, torch.float32)), target_poses[:, 0])
        mask = input_mask.to(device)
        rel = torch.where(mask[..., None, None], rel, torch.eye(4, device=device).expand_as(rel))
        features = self.image_encoder.encode_views(input_images.to(device), mask)
        extras = None
        if "plucker" in self.config.extra_maps:
            if target_intrinsics is None:
                raise ValueError("extra_maps=('plucker',) needs target_intrinsics (fx, fy, cx, cy at model resolution)")
            rel_targets = relative_poses(target_poses, target_poses[:, 0])
            extras = plucker_rays(
                rel_targets, target_intrinsics.to(device, torch.float32), (self.height, self.width), self.latent_hw
            )
        maps = []
        nearest = None
        if "nearest_input" in self.config.extra_maps or self.config.output_parameterization == "input_residual":
            if input_latents is None:
                k = input_images.shape[1]
                flat = self.resize(input_images.flatten(0, 1).to(device).float())
                input_latents = self.encode_latents(flat).reshape(b, k, *render_latents.shape[2:])
            nearest = nearest_input_latents(input_latents.to(device, torch.float32), mask, input_poses, target_poses)
        if "nearest_input" in self.config.extra_maps:
            maps.append(nearest)
        if "warped_input" in self.config.extra_maps:
            if warped_latents is None:
                raise ValueError("extra_maps 'warped_input' needs warped_latents (render depths at sampling time)")
            maps.append(warped_latents.to(device, torch.float32))
        input_map = torch.cat(maps, dim=2) / self.scaling_factor if maps else None
        time_ids = torch.stack(
            [
                torch.full((b,), float(self.config.fps_id), device=device),
                torch.full((b,), float(self.config.motion_bucket_id), device=device),
                render_noise,
            ],
            dim=1,
        )
        render_base = nearest if self.config.output_parameterization == "input_residual" else render_latents
        render_base = render_base.to(device, torch.float32)
        return Conditioning(render_cond, extras, features, rel, mask, time_ids, input_map, render_base)

    # ----------------------------------------------------------------------------------------- training
    def training_loss(
        self,
        batch: Dict[str, Tensor],
        generator: Optional[torch.Generator],
        render_noise: Union[float, Tensor],
        drop_inputs: float = 0.1,
        drop_renders: float = 0.1,
        drop_both: float = 0.1,
        denoiser: Optional[nn.Module] = None,
    ) -> Tuple[Tensor, Dict[str, float]]:
        """EDM v-prediction loss on one batch from :class:`~itergen_ns.diffusion.data.SnapshotClipDataset`.

        Conditioning dropout draws one category per sample: inputs only (``drop_inputs``), renders only
        (``drop_renders``), both (``drop_both``), or none. ``denoiser`` defaults to ``self.denoiser`` (pass the
        accelerate-wrapped one when training). All randomness comes from ``generator``.
        """
        denoiser = denoiser if denoiser is not None else self.denoiser
        device = self.device
        frames = batch["frames"]
        b, g = frames.shape[:2]  # frames may be omitted only when "latents" are given
        if "latents" in batch:  # precomputed scaled latents of the ground-truth frames
            x0 = batch["latents"].to(device, torch.float32)
        else:
            x0 = self.encode_latents(frames.flatten(0, 1).to(device)).reshape(b, g, -1, *self.latent_hw)
        if "render_latents" in batch:
            render_latents = batch["render_latents"].to(device, torch.float32)
        else:
            render_latents = self.encode_latents(batch["renders"].flatten(0, 1).to(device)).reshape(x0.shape)
        cond = self.prepare_conditioning(
            render_latents,
            batch["input_images"],
            batch["input_mask"],
            batch["input_c2w"],
            batch["target_c2w"],
            render_noise,
            generator,
            batch.get("target_intrinsics"),
            batch.get("input_latents"),
            self._warped_latents(batch, x0.shape),
        )
        u = rand((b,), generator, device)
        drop_in = u < drop_inputs
        drop_r = (u >= drop_inputs) & (u < drop_inputs + drop_renders)
        drop_all = (u >= drop_inputs + drop_renders) & (u < drop_inputs + drop_renders + drop_both)
        cond = cond.with_dropout(keep_render=~(drop_r | drop_all), keep_inputs=~(drop_in | drop_all))
        sigma = edm.sample_sigmas(
            b, self.config.sigma_p_mean, self.config.sigma_p_std, generator, device, *self._sigma_range()
        )
        eps = randn(x0.shape, generator, device)
        x = x0 + sigma.view(-1, 1, 1, 1, 1) * eps
        pred = denoiser(edm.scale_input(x, sigma), edm.c_noise(sigma), **cond.as_kwargs())
        if self.config.output_parameterization in RESIDUAL_PARAMETERIZATIONS:
            # x0 loss with the EDM weight clipped (the v loss equals it unclipped).
            weight = ((sigma**2 + 1.0) / sigma**2).clamp(max=self.config.residual_loss_weight_max)
            err = (edm.denoised(pred.float(), x, sigma) - x0) ** 2
            loss = (weight.view(-1, 1, 1, 1, 1) * err).mean()
        else:
            loss = F.mse_loss(pred.float(), edm.v_target(x0, x, sigma))
        logs = {"sigma_mean": float(sigma.mean()), "dropped_3d": float((drop_r | drop_all).float().mean())}
        return loss, logs

    def _warped_latents(self, batch: Dict[str, Tensor], shape) -> Optional[Tensor]:
        """Scaled latents of the batch's warp composites: cached ("warped_latents") or encoded ("warped")."""
        if "warped_latents" in batch:
            return batch["warped_latents"].to(self.device, torch.float32)
        if "warped" in batch:
            return self.encode_latents(batch["warped"].flatten(0, 1).to(self.device)).reshape(shape)
        return None

    def _sigma_range(self) -> Tuple[float, float]:
        return float(self.scheduler_config.get("sigma_min") or 0.002), float(
            self.scheduler_config.get("sigma_max") or 700.0
        )


# ------------------------------------------------------------------------------------------------ builders
def _cross_attention_dim(unet) -> int:
    dim = unet.config.cross_attention_dim
    return int(dim[0] if isinstance(dim, (list, tuple)) else dim)


def _image_encoder(
    config: DiffusionModelConfig, clip: CLIPVisionModelWithProjection, dino: Dinov2Model
) -> ImageFeatureEncoder:
    """Wrap built CLIP and DINOv2 models with the config's input sizes and normalisation."""
    return ImageFeatureEncoder(
        clip,
        dino,
        config.clip_image_size,
        config.dino_image_size,
        config.clip_mean,
        config.clip_std,
        config.dino_mean,
        config.dino_std,
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


def _build_vae(source: ComponentSource, allow_download: bool) -> VAE:
    kwargs = dict(source.kwargs)
    cls_name = kwargs.pop("class_name", "AutoencoderKLTemporalDecoder")
    if cls_name == "AutoencoderTinyPool":
        from itergen_ns.diffusion.taef2 import AutoencoderTinyPool, load_taef2

        if source.pretrained == TAEF2_SOURCE:
            return load_taef2()
        if source.pretrained:
            return load_pretrained("VAE (AutoencoderTinyPool)", AutoencoderTinyPool.from_pretrained, source, False)
        raise ValueError("vae class AutoencoderTinyPool needs pretrained weights ('taef2' or a saved folder)")
    vae_cls = {"AutoencoderKLTemporalDecoder": AutoencoderKLTemporalDecoder, "AutoencoderKL": AutoencoderKL}[cls_name]
    if source.pretrained:
        return load_pretrained(f"VAE ({cls_name})", vae_cls.from_pretrained, source, allow_download)
    return vae_cls(**kwargs)


def _build_clip(source: ComponentSource, allow_download: bool) -> CLIPVisionModelWithProjection:
    if source.pretrained:
        return load_pretrained(
            "CLIP image encoder (CLIPVisionModelWithProjection)",
            CLIPVisionModelWithProjection.from_pretrained,
            source,
            allow_download,
        )
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**source.kwargs))


def _build_dino(source: ComponentSource, allow_download: bool) -> Dinov2Model:
    if source.pretrained:
        return load_pretrained(
            "DINOv2 image encoder (Dinov2Model)", Dinov2Model.from_pretrained, source, allow_download
        )
    return Dinov2Model(Dinov2Config(**source.kwargs))


def _scheduler_config(source: ComponentSource, allow_download: bool) -> Dict:
    if source.pretrained:
        sched = load_pretrained("scheduler", EulerDiscreteScheduler.from_pretrained, source, allow_download)
        return dict(sched.config)
    return dict(EulerDiscreteScheduler(**source.kwargs).config)
