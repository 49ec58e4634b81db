"""Model configuration of P_theta and its two named presets, ``tiny`` (random init, CPU) and ``svd`` (real sizes).

A :class:`DiffusionModelConfig` says, for each component (UNet, VAE, CLIP, DINOv2, scheduler), either where to
load pretrained weights from (hub id or local directory, plus subfolder) or which constructor kwargs to build
it from at random. Both presets go through exactly the same code paths; only sizes and sources differ.
The config is plain data (JSON round-trip via :func:`config_to_dict` / :func:`config_from_dict`) so a saved
model directory records how it was built.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Tuple

from itergen_ns.diffusion.sampling import ClipStatistics, SamplingConfig

SVD_HUB_ID = "stabilityai/stable-video-diffusion-img2vid"
DINOV2_HUB_ID = "facebook/dinov2-base"

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Stable Video Diffusion's scheduler: EDM sigmas (Karras), v-prediction, continuous timesteps 0.25*ln(sigma).
SVD_SCHEDULER_KWARGS: Dict[str, Any] = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="v_prediction",
    interpolation_type="linear",
    use_karras_sigmas=True,
    sigma_min=0.002,
    sigma_max=700.0,
    timestep_spacing="leading",
    timestep_type="continuous",
    steps_offset=1,
)

EXTRA_MAP_CHANNELS = {"plucker": 6}
"""Extra per-frame maps of fixed width. The input maps ("nearest_input": the latent of the input view nearest each
target camera; "warped_input": the latent of the render with that input view's pixels warped in through the
render's depth, ``itergen_ns.render.warp``; each ``latent_channels`` wide) are separate: they are input-view
conditions and are dropped with the inputs."""
INPUT_MAPS = ("nearest_input", "warped_input")
OUTPUT_PARAMETERIZATIONS = ("v", "render_residual", "input_residual")
RESIDUAL_PARAMETERIZATIONS = ("render_residual", "input_residual")

# The tiny preset's CLIP and DINOv2 share one small ViT backbone (CLIP adds its projection head).
TINY_VIT_KWARGS: Dict[str, Any] = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)


@dataclass
class ComponentSource:
    """Where one component comes from: ``pretrained`` (hub id or local dir, optional subfolder) or random init.

    ``kwargs`` are the constructor arguments used for random init (ignored when ``pretrained`` is set).
    """

    pretrained: Optional[str] = None
    subfolder: Optional[str] = None
    kwargs: Dict[str, Any] = field(default_factory=dict)
    variant: Optional[str] = None


@dataclass
class DiffusionModelConfig:
    """Everything needed to build P_theta(x_g | z_t, x_c, c_g)."""

    name: str
    height: int
    """Pixel height of generated frames (the model's working resolution)."""
    width: int
    num_frames: int
    """Frames per generated clip G (the UNet handles other counts, but it is trained on this one)."""
    max_input_views: int
    """K: input-view slots in the cross-attention sequence (1 + 3K tokens; unused slots are zero tokens)."""
    unet: ComponentSource
    vae: ComponentSource
    clip: ComponentSource
    dino: ComponentSource
    scheduler: ComponentSource
    extra_maps: Tuple[str, ...] = ()
    """Extra per-frame input maps after the render latent: "plucker" (6 ch., rays of the target camera),
    "nearest_input" (latent of the input view whose camera centre is nearest the target's) and/or
    "warped_input" (latent of the render repainted with that input view warped through the render's depth;
    needs render depths at sampling). The two input maps are dropped with the input views for guidance."""
    output_parameterization: str = "v"
    """"v": the paper's (SVD's) v-prediction. "render_residual" (a flagged departure, issue 14): the denoised
    estimate is ``render_latent + F`` with the UNet's last layer zero-initialised, so an untrained model returns
    the render (generator gain 0) and training can only add a correction; still sampled as v by the scheduler.
    "input_residual" (departure, issue 14): the same with the latent of the nearest input view as the identity,
    so an untrained model returns the input-view copy (margin 0) and training adds the correction."""
    residual_loss_weight_max: float = 5.0
    """Residual outputs only: the EDM weight (sigma^2+1)/sigma^2 of the x0 loss is clipped to this (min-SNR
    style) so tiny noise levels do not dominate the gradient."""
    clip_image_size: int = 224
    dino_image_size: int = 224
    clip_mean: Tuple[float, float, float] = CLIP_MEAN
    clip_std: Tuple[float, float, float] = CLIP_STD
    dino_mean: Tuple[float, float, float] = IMAGENET_MEAN
    dino_std: Tuple[float, float, float] = IMAGENET_STD
    pose_num_freqs: int = 6
    pose_hidden_dim: int = 256
    pose_translation_scale: float = 1.0
    """Relative translations are multiplied by this before the Fourier features (poses in nerfstudio units)."""
    fps_id: int = 6
    """SVD added_time_ids[0] (SVD was trained on fps-1; 6 = its default 7 fps), kept fixed."""
    motion_bucket_id: int = 127
    """SVD added_time_ids[1], kept fixed at SVD's default."""
    sigma_p_mean: float = 0.7
    """Training noise levels: ln(sigma) ~ N(sigma_p_mean, sigma_p_std^2) (EDM / SVD fine-tuning)."""
    sigma_p_std: float = 1.6
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How this model is sampled (saved with it; render_noise = the std it was trained with)."""
    clip_statistics: Optional[ClipStatistics] = None
    """Camera motion of the training clips (set by the trainer; None for an untrained model)."""
    seed: int = 0
    """Seed of random initialisation (components without pretrained weights)."""
    allow_download: bool = False
    """Allow from_pretrained to reach the Hugging Face hub; off by default so nothing hits the network."""

    @property
    def latent_channels(self) -> int:
        """Channels of the VAE latent (4 for SD/SVD VAEs, 32 for TAEF2)."""
        return int(self.vae.kwargs.get("latent_channels", 4))

    @property
    def extra_channels(self) -> int:
        """Channels of the fixed-width extra maps (plucker); the input map is counted separately."""
        return sum(EXTRA_MAP_CHANNELS[name] for name in self.extra_maps if name in EXTRA_MAP_CHANNELS)

    @property
    def input_map_channels(self) -> int:
        return self.latent_channels * sum(name in self.extra_maps for name in INPUT_MAPS)

    @property
    def needs_depth(self) -> bool:
        """Whether sampling needs render depths (the warped-input map)."""
        return "warped_input" in self.extra_maps

    @property
    def unet_in_channels(self) -> int:
        """Noisy latent + render latent + extra maps + input-view latent maps."""
        return 2 * self.latent_channels + self.extra_channels + self.input_map_channels

    def validate(self) -> None:
        supported = sorted(EXTRA_MAP_CHANNELS) + list(INPUT_MAPS)
        unknown = [m for m in self.extra_maps if m not in supported]
        if unknown:
            raise ValueError(f"unknown extra_maps {unknown}; supported: {supported}")
        if self.output_parameterization not in OUTPUT_PARAMETERIZATIONS:
            raise ValueError(
                f"output_parameterization must be one of {OUTPUT_PARAMETERIZATIONS}, "
                f"got {self.output_parameterization!r}"
            )
        if self.height % 8 or self.width % 8:
            raise ValueError(f"height and width must be multiples of 8, got {self.height}x{self.width}")
        if self.max_input_views < 1:
            raise ValueError("max_input_views must be >= 1")
        self.sampling.validate()


TAEF2_SOURCE = "taef2"
"""``vae.pretrained`` value naming the vendored TAEF2 autoencoder."""


def config_to_dict(cfg: DiffusionModelConfig) -> Dict[str, Any]:
    return dataclasses.asdict(cfg)


def config_from_dict(data: Dict[str, Any]) -> DiffusionModelConfig:
    """Inverse of :func:`config_to_dict` (tuples restored, unknown keys rejected)."""
    data = copy.deepcopy(data)
    for key in ("unet", "vae", "clip", "dino", "scheduler"):
        data[key] = ComponentSource(**data[key])
    if isinstance(data.get("sampling"), dict):
        data["sampling"] = SamplingConfig.from_dict(data["sampling"])
    if isinstance(data.get("clip_statistics"), dict):
        data["clip_statistics"] = ClipStatistics.from_dict(data["clip_statistics"])
    for key in ("extra_maps", "clip_mean", "clip_std", "dino_mean", "dino_std"):
        if key in data:
            data[key] = tuple(data[key])
    for key in ("block_out_channels", "down_block_types", "up_block_types", "num_attention_heads"):
        for comp in (data["unet"], data["vae"]):
            if isinstance(comp.kwargs.get(key), list):
                comp.kwargs[key] = tuple(comp.kwargs[key])
    cfg = DiffusionModelConfig(**data)
    cfg.validate()
    return cfg
