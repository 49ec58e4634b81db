"""Settings of a diffusion training run (``itergen train-diffusion``), the model config they build, and what a run
returns; shared by the trainer and the tools that launch it (demo, recipe)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch

from itergen_ns.diffusion.configs import DiffusionModelConfig
from itergen_ns.diffusion.presets import get_model_config
from itergen_ns.diffusion.sampling import SamplingConfig


@dataclass
class TrainDiffusionConfig:
    """Train the render-conditioned video diffusion model on snapshot shards."""

    data: Path
    """Snapshot root (holds format.json and shards/)."""
    output_dir: Path = Path("runs/diffusion")
    model: Literal["tiny", "taef2", "svd"] = "tiny"
    """Named model config."""
    init: Optional[str] = None
    """svd: SVD checkpoint to start from (hub id or local dir with unet/ vae/ image_encoder/ scheduler/)."""
    dino: Optional[str] = None
    """svd: DINOv2 weights (hub id or local dir); default facebook/dinov2-base."""
    random_init: bool = False
    """svd: build the real-size architecture without loading weights (benchmarks)."""
    allow_download: bool = False
    """Let from_pretrained download missing weights (needs internet)."""
    extra_maps: Tuple[str, ...] = ()
    """Extra UNet input maps (plucker, nearest_input, warped_input); empty: the preset's."""
    output_parameterization: Optional[Literal["v", "render_residual", "input_residual"]] = None
    """What the UNet predicts (v, or a correction of the render / nearest input latent); None: the preset's."""
    resume: Optional[str] = None
    """'latest' or a checkpoint directory to resume from; 'auto': the latest checkpoint if there is one, else
    start fresh (so the same command, rerun after a kill, resumes)."""
    max_steps: int = 2000
    batch_size: int = 1
    """Clips per process per micro-step."""
    gradient_accumulation_steps: int = 1
    global_batch_size: Optional[int] = None
    """Clips per optimisation step over all processes: sets gradient_accumulation_steps to
    global_batch_size / (batch_size x processes), which must be a whole number. The same command then trains
    the same model on 1 or N processes (e.g. 4 = 1 process accumulating 4 micro-steps = 4 GPUs)."""
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant_with_warmup"
    lr_warmup_steps: int = 100
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    use_ema: bool = True
    ema_decay: float = 0.9999
    ema_power: float = 0.75
    """EMA warm-up exponent (decay ramps as 1 - (1 + step)^-power, capped at ema_decay)."""
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = "auto"
    """auto: bf16 on GPUs that support it, else fp16 on GPU, fp32 on CPU."""
    gradient_checkpointing: bool = False
    checkpoint_every: int = 500
    keep_checkpoints: int = 3
    validate_every: int = 500
    validation_clips: int = 2
    validation_inference_steps: Optional[int] = None
    log_every: int = 10
    seed: int = 0
    num_workers: int = 0
    drop_inputs: float = 0.1
    drop_renders: float = 0.1
    drop_both: float = 0.1
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """How the trained model will be sampled, saved in its directory. ``sampling.render_noise`` is also the std
    of the training noise on render latents: 0 trains the paper's "no conditioning noise" ablation model."""
    render_noise_random: bool = False
    """Draw each sample's render noise uniformly in [0, render_noise] (the strength is a UNet time id)."""
    frame_stride: Tuple[int, int] = (1, 1)
    """Range of frame strides of a training clip along the trajectory."""
    extra_input_prob: float = 0.0
    """Probability of adding random extra frames of the sequence as input views."""
    use_render_latents: bool = True
    """Use precomputed shard render_latents when every shard has them at the model's latent shape."""
    cache_latents: bool = True
    """With a pretrained (frozen) VAE: encode every snapshot frame and render once, saved under
    OUTPUT_DIR/latent_cache, instead of encoding each batch."""
    vae_fit_steps: Optional[int] = None
    """Steps fitting a VAE that has no pretrained weights before diffusion training (None: 400 if needed, else 0)."""
    progress: bool = True
    cpu_threads: int = 1
    """torch intra-op threads when training on CPU (0: torch's default). The tiny model's ops are too small for
    threads to pay off: on a busy 2-core machine 1 thread ran 15x faster than 2."""
    model_overrides: Dict[str, float] = field(default_factory=dict)
    """Extra DiffusionModelConfig fields (API use; on the command line whole numbers of int fields, e.g.
    ``num_frames 4``, are passed as ints)."""


@dataclass
class TrainResult:
    step: int
    losses: Dict[int, float]
    """Mean training loss per optimisation step (steps run by this call)."""
    output_dir: Path
    vae_losses: List[float] = field(default_factory=list)


def build_model_config(cfg: TrainDiffusionConfig) -> DiffusionModelConfig:
    int_fields = {f.name for f in dataclasses.fields(DiffusionModelConfig) if f.type in (int, "int")}
    # the CLI parses model_overrides as floats: num_frames 4 arrives as 4.0 and would index arrays as a float
    overrides: Dict[str, Any] = {
        k: int(v) if k in int_fields and isinstance(v, float) and float(v).is_integer() else v
        for k, v in cfg.model_overrides.items()
    }
    if cfg.extra_maps:
        overrides["extra_maps"] = tuple(cfg.extra_maps)
    if cfg.output_parameterization is not None:
        overrides["output_parameterization"] = cfg.output_parameterization
    overrides["allow_download"] = cfg.allow_download
    if cfg.model == "svd":
        kwargs: Dict[str, Any] = dict(random_init=cfg.random_init)
        if cfg.init:
            kwargs["init"] = cfg.init
        if cfg.dino:
            kwargs["dino"] = cfg.dino
        return get_model_config("svd", **kwargs, **overrides)
    if cfg.init or cfg.dino:
        raise ValueError("--init/--dino apply to the svd model config (add --model svd); tiny is randomly initialised")
    return get_model_config(cfg.model, **overrides)


def mixed_precision_mode(choice: str) -> str:
    if choice != "auto":
        return choice
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def step_generator(seed: int, step: int, micro_step: int, process: int, device: torch.device) -> torch.Generator:
    """Noise source of one micro-step: a pure function of (seed, step, micro-step, process), so resuming is exact.

    The trainer passes the micro-batch's slot in the global batch (``micro * num_processes + process``) as
    ``micro_step`` and 0 as ``process``, so noise does not depend on how the global batch is split.
    """
    gen = torch.Generator(device=device if device.type == "cuda" else "cpu")
    gen.manual_seed(((seed * 1_000_003 + step) * 1009 + micro_step) * 131 + process)
    return gen


def accumulation_steps(cfg: TrainDiffusionConfig, num_processes: int) -> int:
    """Gradient accumulation steps: ``cfg.gradient_accumulation_steps``, or derived from ``--global-batch-size``."""
    if cfg.global_batch_size is None:
        return cfg.gradient_accumulation_steps
    per_micro = cfg.batch_size * num_processes
    if cfg.global_batch_size < 1 or cfg.global_batch_size % per_micro:
        raise ValueError(
            f"--global-batch-size {cfg.global_batch_size} is not a multiple of --batch-size {cfg.batch_size} x "
            f"{num_processes} process(es)"
        )
    return cfg.global_batch_size // per_micro
