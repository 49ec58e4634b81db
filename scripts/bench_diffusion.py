#!/usr/bin/env python
"""Benchmark P_theta: training steps/s and sampling seconds per clip.

    python scripts/bench_diffusion.py                       # tiny config on CPU (10 and 25 sampling steps)
    python scripts/bench_diffusion.py --config svd --random-init --device cuda
        # real sizes without weights: 256x256, 20 frames; step time + peak memory with/without gradient
        # checkpointing, sampling s/clip at 25 steps

Inputs are random tensors of the right shapes (speed does not depend on content). Training steps include
everything a real step does: VAE encoding of frames and renders, image encoders, UNet forward/backward,
AdamW. Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Dict, Literal, Optional, Tuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import tyro

from itergen_ns.diffusion.presets import get_model_config
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline


@dataclass
class BenchConfig:
    config: Literal["tiny", "svd"] = "tiny"
    random_init: bool = False
    """svd: build real-size architectures without weights."""
    device: Optional[str] = None
    """Default: cuda when available, else cpu."""
    height: Optional[int] = None
    width: Optional[int] = None
    frames: Optional[int] = None
    views: int = 2
    train_steps: int = 10
    sample_steps: Tuple[int, ...] = (10, 25)
    guidance_3d: float = 0.8
    guidance_input: float = 2.0
    """Both != 1: three guidance branches per step (the worst case); 1/1 is also timed."""
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    checkpointing: Tuple[bool, ...] = (False, True)
    """GPU: gradient-checkpointing settings to time."""
    threads: Optional[int] = None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def random_batch(model: IterGenDiffusionModel, views: int, device: torch.device) -> Dict[str, torch.Tensor]:
    g, k, h, w = model.num_frames, model.config.max_input_views, model.height, model.width
    gen = torch.Generator().manual_seed(0)
    mask = torch.zeros(1, k, dtype=torch.bool)
    mask[:, :views] = True
    poses = torch.eye(4).repeat(1, g, 1, 1)
    poses[..., 0, 3] = torch.linspace(0, 1, g)
    batch = {
        "frames": torch.rand(1, g, 3, h, w, generator=gen),
        "renders": torch.rand(1, g, 3, h, w, generator=gen),
        "input_images": torch.rand(1, k, 3, h, w, generator=gen),
        "input_mask": mask,
        "input_c2w": torch.eye(4).repeat(1, k, 1, 1),
        "target_c2w": poses,
        "target_intrinsics": torch.tensor([w, h, w / 2, h / 2], dtype=torch.float32).expand(1, g, 4).clone(),
    }
    return {key: v.to(device) for key, v in batch.items()}


def bench_train(model, batch, steps: int, device: torch.device, amp_dtype: Optional[torch.dtype]) -> Dict[str, float]:
    opt = torch.optim.AdamW([p for p in model.denoiser.parameters() if p.requires_grad], lr=1e-5)
    model.denoiser.train()

    def one(i: int) -> float:
        gen = torch.Generator(device=device).manual_seed(i)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            loss, _ = model.training_loss(batch, gen, 0.1)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    for i in range(2):  # warm-up (allocator, kernels)
        one(i)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        one(100 + i)
    _sync(device)
    dt = (time.perf_counter() - t0) / steps
    out = {"train_step_s": dt, "train_it_per_s": 1.0 / dt}
    if device.type == "cuda":
        out["train_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    return out


def bench_sample(model, batch, steps: int, g3: float, gi: float, device: torch.device, amp_dtype) -> float:
    pipe = IterGenVideoPipeline(model)
    k = int(batch["input_mask"][0].sum())
    args = (batch["renders"][0], batch["input_images"][0, :k], batch["input_c2w"][0, :k], batch["target_c2w"][0])
    model.denoiser.eval()
    with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        pipe(
            *args, num_inference_steps=1, guidance_3d=g3, guidance_input=gi, generator=torch.Generator().manual_seed(0)
        )
        _sync(device)
        t0 = time.perf_counter()
        pipe(
            *args,
            num_inference_steps=steps,
            guidance_3d=g3,
            guidance_input=gi,
            generator=torch.Generator().manual_seed(1),
            target_intrinsics=batch["target_intrinsics"][0],
        )
        _sync(device)
    return time.perf_counter() - t0


def main(cfg: BenchConfig) -> Dict:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    overrides = {}
    if cfg.height:
        overrides["height"] = cfg.height
    if cfg.width:
        overrides["width"] = cfg.width
    if cfg.frames:
        overrides["num_frames"] = cfg.frames
    kwargs = dict(random_init=cfg.random_init) if cfg.config == "svd" else {}
    model_cfg = get_model_config(cfg.config, **kwargs, **overrides)
    t0 = time.perf_counter()
    model = IterGenDiffusionModel.from_config(model_cfg).to(device)
    build_s = time.perf_counter() - t0
    mp = cfg.mixed_precision
    if mp == "auto":
        mp = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if device.type == "cuda" else "no"
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(mp)
    if amp_dtype is not None:  # frozen parts in half precision, as in training
        model.vae.to(dtype=amp_dtype)
        model.image_encoder.to(dtype=amp_dtype)
    batch = random_batch(model, cfg.views, device)
    n_params = sum(p.numel() for p in model.denoiser.parameters())
    result: Dict = {
        "config": cfg.config,
        "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
        "threads": torch.get_num_threads(),
        "resolution": [model.height, model.width],
        "frames": model.num_frames,
        "input_views": cfg.views,
        "mixed_precision": mp,
        "denoiser_params_m": n_params / 1e6,
        "build_s": build_s,
        "train": {},
        "sample_s_per_clip": {},
    }
    settings = cfg.checkpointing if device.type == "cuda" else (False,)
    for ckpt in settings:
        if ckpt:
            model.denoiser.unet.enable_gradient_checkpointing()
        else:
            model.denoiser.unet.disable_gradient_checkpointing()
        key = "grad_checkpointing" if ckpt else "no_checkpointing"
        result["train"][key] = bench_train(model, batch, cfg.train_steps, device, amp_dtype)
    model.denoiser.unet.disable_gradient_checkpointing()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for steps in cfg.sample_steps:
        result["sample_s_per_clip"][f"{steps}_steps_cfg_3branches"] = bench_sample(
            model, batch, steps, cfg.guidance_3d, cfg.guidance_input, device, amp_dtype
        )
        result["sample_s_per_clip"][f"{steps}_steps_no_cfg"] = bench_sample(
            model, batch, steps, 1.0, 1.0, device, amp_dtype
        )
    if device.type == "cuda":
        result["sample_peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main(tyro.cli(BenchConfig))
