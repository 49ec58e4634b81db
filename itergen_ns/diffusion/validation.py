"""Validation of a diffusion training run: sample fixed clips with the EMA weights, save render | sample | ground
truth grids (PNG) and videos, log the clips' MSE and generator gain (the measure of ``itergen gain``)."""

from __future__ import annotations

from pathlib import Path
from typing import List

import torch

from itergen_ns.diffusion.clip_metrics import clip_gain
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline
from itergen_ns.diffusion.visualize import save_clip_grid, save_side_by_side_video


@torch.no_grad()
def validate(trainer) -> List[Path]:
    """Sample fixed validation clips with the EMA weights; save PNG grids and mp4s; log their MSE and generator gain."""
    acc = trainer.accelerator
    written: List[Path] = []
    if acc.is_main_process:
        val = trainer.dataset.with_seed(trainer.cfg.seed + 7919, length=max(trainer.cfg.validation_clips, 1))
        params = list(trainer.model.denoiser.parameters())
        if trainer.ema is not None:
            trainer.ema.store(params)
            trainer.ema.copy_to(params)
        trainer.model.denoiser.eval()
        pipe = IterGenVideoPipeline(trainer.model)
        mses, gains = [], []
        try:
            for i in range(trainer.cfg.validation_clips):
                item = val[i]
                mask = item["input_mask"]
                warped = item.get("warped")
                if warped is None and "warped_latents" in item:  # cached: its autoencoder round trip
                    with torch.no_grad():
                        warped = trainer.model.decode_latents(item["warped_latents"][None].to(trainer.model.device))[0]
                with acc.autocast():
                    sample = (
                        pipe(
                            item["renders"],
                            item["input_images"][mask],
                            item["input_c2w"][mask],
                            item["target_c2w"],
                            num_inference_steps=trainer.cfg.validation_inference_steps,
                            render_noise=trainer.render_noise,
                            generator=torch.Generator().manual_seed(trainer.cfg.seed + i),
                            target_intrinsics=item["target_intrinsics"],
                            warped_inputs=None if warped is None else warped.float().cpu(),
                        )
                        .float()
                        .cpu()
                    )
                rows = [item["renders"], sample, item["frames"]]
                mses.append(float(((sample - item["frames"]) ** 2).mean()))
                gains.append(clip_gain(item["renders"], sample, item["frames"], item["input_images"][mask][:1]))
                stem = trainer.out / "validation" / f"step_{trainer.step:08d}_clip{i}"
                scale = max(1, 128 // trainer.model.height)
                written.append(save_clip_grid(stem.with_suffix(".png"), rows, scale=scale))
                try:
                    written.append(save_side_by_side_video(stem.with_suffix(".mp4"), rows, scale=scale))
                except (OSError, RuntimeError, ValueError) as err:  # ffmpeg missing: keep the PNGs
                    acc.print(f"validation video not written ({err})")
        finally:
            if trainer.ema is not None:
                trainer.ema.restore(params)
            trainer.model.denoiser.train()
        if mses:
            gain = {f"val/{k}": sum(g[k] for g in gains) / len(gains) for k in gains[0]}  # as `itergen gain`
            acc.log({"val/mse": sum(mses) / len(mses), **gain}, step=trainer.step)
    acc.wait_for_everyone()
    return written
