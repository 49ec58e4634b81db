"""Generator: the diffusion sampler as the itergen datamanager sees it (one call, ``sample``).

Loads a trained model directory (``itergen train-diffusion`` writes ``runs/diffusion/latest``), checks it
against what the run expects (frames, resolution) before training starts, and samples under no_grad — on
CUDA in its own stream so an async worker overlaps with the 3D optimiser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, Type

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.configs.base_config import InstantiateConfig
from nerfstudio.utils.rich_utils import CONSOLE


@dataclass
class GeneratorConfig(InstantiateConfig):
    """P_theta for itergen: which diffusion model and how to sample it."""

    _target: Type = field(default_factory=lambda: Generator)
    checkpoint: Optional[Path] = None
    """Model directory from `itergen train-diffusion` (e.g. runs/diffusion/latest); None: the generator shipped
    in itergen_ns/weights/generator."""
    random_init: bool = False
    """Use a randomly initialised `tiny` model instead (smoke tests and timing only)."""
    num_inference_steps: Optional[int] = None
    """Sampler steps per clip; None: the model's SamplingConfig (saved in its directory)."""
    guidance_3d: Optional[float] = None
    """CFG scale of the render condition (<1 pulls toward the 3D-unconditional model); None: the model's."""
    guidance_input: Optional[float] = None
    """CFG scale of the input-image condition; None: the model's."""
    render_noise: Optional[float] = None
    """Std of the noise on render latents at sampling; None: the std the model was trained with. Setting 0 on a
    model trained with noise is NOT the paper's no-noise ablation (that model is trained without it)."""
    start_sigma: Optional[float] = None
    """SDEdit-style start: noise the render latent to this sigma and denoise from there (fewer steps run);
    None: the model's setting (the paper's full-noise sampling unless the model says otherwise)."""
    expected_num_frames: Optional[int] = None
    """Fail before training if the checkpoint's frame count differs."""
    expected_resolution: Optional[int] = None
    """Fail before training if the checkpoint's (square) resolution differs."""
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    """Sampling precision on CUDA (CPU always samples in float32)."""


class Generator:
    """Wraps an ``IterGenVideoPipeline``; not an nn.Module, so it never enters the 3D checkpoints."""

    def __init__(self, config: GeneratorConfig, device: torch.device | str = "cpu"):
        from itergen_ns.diffusion.pipeline import IterGenVideoPipeline

        self.config = config
        self.device = torch.device(device)
        checkpoint = config.checkpoint
        if checkpoint is None and not config.random_init:
            from itergen_ns.diffusion.presets import shipped_generator

            checkpoint = shipped_generator()
        if checkpoint is None:
            if not config.random_init:
                raise ValueError(
                    "itergen needs a trained diffusion model and this checkout ships none: pass "
                    "--pipeline.generator.checkpoint DIR "
                    "(written by `itergen train-diffusion`, e.g. runs/diffusion/latest), or "
                    "--pipeline.generator.random-init True for a smoke test with an untrained tiny model"
                )
            from itergen_ns.diffusion.presets import tiny_config
            from itergen_ns.diffusion.model import IterGenDiffusionModel

            with torch.random.fork_rng(devices=[]):  # same random model every time, global RNG left untouched
                torch.manual_seed(0)
                pipe = IterGenVideoPipeline(IterGenDiffusionModel.from_config(tiny_config()))
            CONSOLE.print("[bold yellow]itergen: using an untrained tiny diffusion model (random init)")
        else:
            path = Path(checkpoint)
            if not path.exists():
                raise FileNotFoundError(
                    f"--pipeline.generator.checkpoint {path}: no such directory (train one with `itergen train-diffusion`)"
                )
            pipe = IterGenVideoPipeline.from_pretrained(path)
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[config.dtype]
        self.pipe = pipe.to(self.device, dtype=dtype if self.device.type == "cuda" and dtype != torch.float32 else None)
        self._check_expectations()
        self.sampling = self.pipe.model.config.sampling.with_overrides(
            num_inference_steps=config.num_inference_steps,
            guidance_3d=config.guidance_3d,
            guidance_input=config.guidance_input,
            render_noise=config.render_noise,
            start_sigma=config.start_sigma,
        )
        """The settings every clip is sampled with: the model's SamplingConfig plus this config's overrides."""
        self._stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    def _check_expectations(self) -> None:
        cfg, source = self.config, self.config.checkpoint or "the random tiny model"
        if cfg.expected_num_frames is not None and cfg.expected_num_frames != self.num_frames:
            raise ValueError(
                f"{source}: generates {self.num_frames} frames per clip, but the run expects "
                f"{cfg.expected_num_frames} (--pipeline.generator.expected-num-frames / "
                "--pipeline.generation.num-generated-frames)"
            )
        if cfg.expected_resolution is not None and (self.height, self.width) != (cfg.expected_resolution,) * 2:
            raise ValueError(
                f"{source}: resolution {self.height}x{self.width}, but the run expects "
                f"{cfg.expected_resolution}x{cfg.expected_resolution} (--pipeline.generator.expected-resolution)"
            )

    @property
    def height(self) -> int:
        return self.pipe.height

    @property
    def width(self) -> int:
        return self.pipe.width

    @property
    def num_frames(self) -> int:
        return self.pipe.num_frames

    @property
    def needs_intrinsics(self) -> bool:
        """Whether samples need the target cameras' intrinsics (Plücker ray maps)."""
        return "plucker" in self.pipe.model.config.extra_maps

    @property
    def needs_depth(self) -> bool:
        """Whether samples need the warp composites of render depths ("warped_input" map)."""
        return bool(self.pipe.model.config.needs_depth)

    @property
    def clip_statistics(self):
        """The training clips' camera motion (:class:`ClipStatistics`), or None for an untrained model."""
        return self.pipe.model.config.clip_statistics

    @property
    def max_input_views(self) -> int:
        """Most input images one sample can be conditioned on."""
        return int(self.pipe.model.config.max_input_views)

    @torch.no_grad()
    def sample(
        self,
        renders: Float[Tensor, "G 3 H W"],
        input_images: Float[Tensor, "C 3 Hi Wi"],
        input_poses: Float[Tensor, "C 4 4"],
        target_poses: Float[Tensor, "G 4 4"],
        seed: int = 0,
        target_intrinsics: Optional[Float[Tensor, "G 4"]] = None,
        warped_inputs: Optional[Float[Tensor, "G 3 H W"]] = None,
    ) -> Float[Tensor, "G 3 H W"]:
        """Sample G target images in [0, 1] conditioned on renders at ``target_poses`` and the inputs.

        ``target_intrinsics`` (fx, fy, cx, cy in pixels of ``renders``) are needed by models with Plücker maps,
        ``warped_inputs`` (:func:`itergen_ns.render.warp.warp_nearest_input`) by models with the warped-input map.
        """
        rng = torch.Generator(device=self.device).manual_seed(int(seed))
        kwargs = dict(
            num_inference_steps=self.sampling.num_inference_steps,
            guidance_3d=self.sampling.guidance_3d,
            guidance_input=self.sampling.guidance_input,
            render_noise=self.sampling.render_noise,
            start_sigma=self.sampling.start_sigma,
            generator=rng,
            target_intrinsics=target_intrinsics,
            warped_inputs=warped_inputs,
        )
        if self._stream is None:
            return self.pipe(renders, input_images, input_poses, target_poses, **kwargs).float().cpu()
        with torch.cuda.stream(self._stream):
            out = self.pipe(renders, input_images, input_poses, target_poses, **kwargs).float().cpu()
        self._stream.synchronize()
        return out
