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
    """Model directory from `itergen train-diffusion` (e.g. runs/diffusion/latest)."""
    random_init: bool = False
    """Without a checkpoint: use a randomly initialised `tiny` model (smoke tests and timing only)."""
    num_inference_steps: int = 10
    """Sampler steps per clip (few-step sampling is the main speed lever)."""
    guidance_3d: float = 1.0
    """CFG scale of the render condition (<1 pulls toward the 3D-unconditional model)."""
    guidance_input: float = 1.5
    """CFG scale of the input-image condition."""
    render_noise: float = 0.1
    """Noise added to the render latents at sampling time (0: ablation without conditioning noise)."""
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
        if config.checkpoint is None:
            if not config.random_init:
                raise ValueError(
                    "itergen needs a trained diffusion model: pass --pipeline.generator.checkpoint DIR "
                    "(written by `itergen train-diffusion`, e.g. runs/diffusion/latest), or "
                    "--pipeline.generator.random-init True for a smoke test with an untrained tiny model"
                )
            from itergen_ns.diffusion.configs import tiny_config
            from itergen_ns.diffusion.model import IterGenDiffusionModel

            with torch.random.fork_rng(devices=[]):  # same random model every time, global RNG left untouched
                torch.manual_seed(0)
                pipe = IterGenVideoPipeline(IterGenDiffusionModel.from_config(tiny_config()))
            CONSOLE.print("[bold yellow]itergen: using an untrained tiny diffusion model (random init)")
        else:
            path = Path(config.checkpoint)
            if not path.exists():
                raise FileNotFoundError(
                    f"--pipeline.generator.checkpoint {path}: no such directory (train one with `itergen train-diffusion`)"
                )
            pipe = IterGenVideoPipeline.from_pretrained(path)
        dtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[config.dtype]
        self.pipe = pipe.to(self.device, dtype=dtype if self.device.type == "cuda" and dtype != torch.float32 else None)
        self._check_expectations()
        self._stream = torch.cuda.Stream(device=self.device) if self.device.type == "cuda" else None

    def _check_expectations(self) -> None:
        cfg, source = self.config, self.config.checkpoint or "the random tiny model"
        if cfg.expected_num_frames is not None and cfg.expected_num_frames != self.num_frames:
            raise ValueError(
                f"{source}: generates {self.num_frames} frames per clip, but the run expects "
                f"{cfg.expected_num_frames} (--pipeline.generator.expected-num-frames / "
                "--pipeline.datamanager.num-generated-frames)"
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
    ) -> Float[Tensor, "G 3 H W"]:
        """Sample G target images in [0, 1] conditioned on renders at ``target_poses`` and the inputs."""
        rng = torch.Generator(device=self.device).manual_seed(int(seed))
        kwargs = dict(
            num_inference_steps=self.config.num_inference_steps,
            guidance_3d=self.config.guidance_3d,
            guidance_input=self.config.guidance_input,
            render_noise=self.config.render_noise,
            generator=rng,
        )
        if self._stream is None:
            return self.pipe(renders, input_images, input_poses, target_poses, **kwargs).float().cpu()
        with torch.cuda.stream(self._stream):
            out = self.pipe(renders, input_images, input_poses, target_poses, **kwargs).float().cpu()
        self._stream.synchronize()
        return out
