"""Standalone training of P_theta on snapshot shards with HF ``accelerate`` (CPU, one GPU, many GPUs/nodes).

    python -m itergen_ns.diffusion.train --data snapshots/x --model tiny --max-steps 2000
    accelerate launch -m itergen_ns.diffusion.train --data snapshots/hydrant --model svd \\
        --init /models/stable-video-diffusion-img2vid --dino /models/dinov2-base --mixed-precision bf16

Output directory layout::

    OUT/checkpoints/step_XXXXXXXX/   accelerate state (model, optimizer, lr scheduler, EMA, RNG) + trainer_state.json
    OUT/latest/                      save_pretrained of the EMA weights: what ``itergen`` loads
    OUT/logs/                        tensorboard scalars
    OUT/validation/step_XXXXXXXX_*.{png,mp4}   render conditioning | sample | ground truth

Checkpoints are atomic (:mod:`itergen_ns.diffusion.checkpointing`). Resuming (``--resume latest`` or a
checkpoint path) restores everything, and because training items and noise are pure functions of (seed, step, slot
in the global batch), the resumed run continues exactly as the interrupted one would have.

Several processes (``accelerate launch --num_processes N``): each process takes ``batch_size`` clips per
micro-step, so an optimisation step sees ``batch_size x N x gradient_accumulation_steps`` clips.
``--global-batch-size G`` fixes that number instead and sets the accumulation steps from the process count, so
the same command trains the same model on 1 or N processes: micro-batch ``m`` of process ``p`` is slot
``m * N + p`` of the step, and its clips and noise depend on the slot only (1 process accumulating 2 micro-steps
and 2 processes gave the same loss curve, tests/test_multiprocess.py). A checkpoint resumes under any process
count (the learning-rate schedule is re-aligned to the step).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch
import tyro
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from itergen_ns.diffusion import checkpointing
from itergen_ns.diffusion.clip_stats import measure_clip_statistics
from itergen_ns.diffusion.data import StepSampler
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.vae_fit import fit_vae
from itergen_ns.diffusion.train_config import (
    TrainDiffusionConfig,
    TrainResult,
    accumulation_steps,
    build_model_config,
    mixed_precision_mode,
    step_generator,
)
from itergen_ns.diffusion.train_setup import build_dataset, build_latent_cache, build_optimisation, vae_fit_steps
from itergen_ns.diffusion.validation import validate


class Trainer:
    """Owns the accelerator, model, optimiser, EMA and the loop; one instance per training run."""

    def __init__(self, cfg: TrainDiffusionConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=mixed_precision_mode(cfg.mixed_precision),
            gradient_accumulation_steps=cfg.gradient_accumulation_steps,
            log_with="tensorboard",
            project_config=ProjectConfiguration(project_dir=str(self.out), logging_dir=str(self.out / "logs")),
        )
        acc = self.accelerator
        self.accumulation = accumulation_steps(cfg, acc.num_processes)
        acc.gradient_accumulation_steps = self.accumulation
        if cfg.cpu_threads > 0 and acc.device.type == "cpu":
            torch.set_num_threads(cfg.cpu_threads)
        torch.manual_seed(cfg.seed)
        self.model_config = build_model_config(cfg)
        self.model = IterGenDiffusionModel.from_config(self.model_config)
        self.weight_dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(acc.mixed_precision, torch.float32)
        self.model.to(acc.device)
        # The saved model is sampled the way it was trained: same render-noise std (and the training clips'
        # camera motion, measured below, for the pose sampler).
        cfg.sampling.validate()
        self.model.config.sampling = dataclasses.replace(cfg.sampling)
        self.render_noise = cfg.sampling.render_noise
        if cfg.gradient_checkpointing:
            self.model.denoiser.unet.enable_gradient_checkpointing()
        self.vae_fit_steps = vae_fit_steps(cfg, self.model_config)
        self.vae_fitted = self.model_config.vae.pretrained is None and self.vae_fit_steps > 0
        self.dataset = build_dataset(cfg, self.model, cfg.use_render_latents and not self.vae_fit_steps)
        self.model.config.clip_statistics = measure_clip_statistics(
            [np.asarray(shard.c2w) for shard in self.dataset.shards], self.model.num_frames, cfg.frame_stride
        )
        self.latent_cache = None
        if cfg.cache_latents and self.model_config.vae.pretrained is not None:
            main = acc.is_main_process
            self.latent_cache = build_latent_cache(
                self.dataset,
                self.model,
                self.model_config,
                self.out / "latent_cache" if main else None,
                cfg.progress and acc.is_local_main_process,
            )
            self.dataset.attach_latents(self.latent_cache)
        self._prepare_optimisation()
        self.step = 0

    def _prepare_optimisation(self) -> None:
        """Optimiser, LR schedule and EMA, handed to accelerate (and registered for its checkpoints)."""
        acc = self.accelerator
        denoiser = self.model.denoiser
        denoiser.train()
        optimizer, lr_scheduler, self.ema = build_optimisation(self.cfg, denoiser, acc.num_processes)
        self.denoiser, self.optimizer, self.lr_scheduler = acc.prepare(denoiser, optimizer, lr_scheduler)
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        if self.vae_fitted:
            acc.register_for_checkpointing(self.model.vae)

    # ------------------------------------------------------------------------------------------ state
    def _cast_frozen(self) -> None:
        if self.weight_dtype == torch.float32:
            return
        self.model.vae.to(dtype=self.weight_dtype)
        self.model.image_encoder.to(dtype=self.weight_dtype)

    def resume(self, resume: str) -> Path:
        """Restore a checkpoint (``latest`` or a path): weights, optimiser, schedule, EMA, RNG and the step."""
        ckpt = checkpointing.resolve_checkpoint(self.out, resume)
        state = checkpointing.load_checkpoint(self.accelerator, ckpt, self._geometry())
        self.step = int(state["step"])
        checkpointing.align_lr_schedule(self.lr_scheduler, self.optimizer, self.step, self.accelerator.num_processes)
        if state.get("vae_scaling_factor") is not None:
            self.model.vae.register_to_config(scaling_factor=state["vae_scaling_factor"])
        if state.get("vae_fitted"):
            self.model.config.vae.pretrained = None
        return ckpt

    def _geometry(self) -> Dict[str, int]:
        m = self.model
        return {"num_frames": int(m.num_frames), "height": int(m.height), "width": int(m.width),
                "latent_channels": int(m.latent_channels)}  # fmt: skip

    def save_checkpoint(self) -> Path:
        """Write the step's checkpoint (:mod:`~itergen_ns.diffusion.checkpointing`), then the EMA weights to latest/."""
        acc = self.accelerator
        state = {
            "step": self.step,
            "model_config": self.cfg.model,
            "vae_fitted": self.vae_fitted,
            "vae_scaling_factor": float(self.model.vae.config.scaling_factor),
            **self._geometry(),
            "time": time.time(),
        }
        final = checkpointing.save_checkpoint(acc, self.out, self.step, state, self.cfg.keep_checkpoints)
        if acc.is_main_process:
            self.export(self.out / "latest")
        acc.wait_for_everyone()
        return final

    def export(self, path: Path) -> Path:
        """save_pretrained of the model with EMA weights (training weights untouched)."""
        return checkpointing.export_with_ema(self.model, self.ema, path)

    # ------------------------------------------------------------------------------------------ loop
    def _start(self) -> List[float]:
        """Resume (``--resume``) or start: fit a from-scratch VAE first; returns the VAE fit's losses."""
        cfg, acc = self.cfg, self.accelerator
        vae_losses: List[float] = []
        checkpointing.remove_temporaries(acc, self.out)
        resume = cfg.resume
        if resume == "auto":
            resume = "latest" if checkpointing.has_checkpoint(self.out) else None
        if resume:
            ckpt = self.resume(resume)
            acc.print(f"resumed from {ckpt} at step {self.step}")
        elif self.vae_fitted:
            vae_losses = fit_vae(
                self.model.vae,
                self.dataset,
                self.vae_fit_steps,
                acc,
                seed=cfg.seed,
                progress=cfg.progress and acc.is_local_main_process,
            )
            self.model.config.vae.pretrained = None
        self._cast_frozen()
        acc.init_trackers("itergen_diffusion", config={"model": cfg.model, "batch_size": cfg.batch_size})
        return vae_losses

    def _loader(self):
        """The remaining steps' batches: a pure function of (seed, step), so a resumed run continues exactly."""
        cfg, acc = self.cfg, self.accelerator
        per_step = cfg.batch_size * acc.num_processes * self.accumulation
        remaining = max(cfg.max_steps - self.step, 0)
        loader = DataLoader(
            self.dataset,
            batch_size=cfg.batch_size,
            sampler=StepSampler(self.step * per_step, remaining * per_step),
            num_workers=cfg.num_workers,
            drop_last=True,
        )
        return acc.prepare(loader)

    def _log_step(self, step_loss: float, logs: Dict[str, float], grad_norm, seconds: float) -> None:
        scalars = {
            "train/loss": step_loss,
            "train/lr": self.lr_scheduler.get_last_lr()[0],
            **{f"train/{k}": v for k, v in logs.items()},
        }
        if grad_norm is not None:
            scalars["train/grad_norm"] = float(grad_norm)
        if self.ema is not None and self.ema.cur_decay_value is not None:
            scalars["train/ema_decay"] = self.ema.cur_decay_value
        scalars["train/steps_per_s"] = self.cfg.log_every / max(seconds, 1e-9)
        self.accelerator.log(scalars, step=self.step)

    def _micro_step(self, batch: Dict, micro: int) -> Tuple[torch.Tensor, Dict[str, float], Optional[torch.Tensor]]:
        """Forward/backward of one micro-batch; the optimiser steps when accelerate's accumulation is complete."""
        cfg, acc = self.cfg, self.accelerator
        slot = micro * acc.num_processes + acc.process_index  # this micro-batch's place in the global batch
        gen = step_generator(cfg.seed, self.step, slot, 0, acc.device)
        noise: Union[float, torch.Tensor] = self.render_noise
        if cfg.render_noise_random:
            noise = torch.rand(cfg.batch_size, generator=gen, device=gen.device) * self.render_noise
        grad_norm = None
        with acc.accumulate(self.denoiser):
            loss, logs = self.model.training_loss(
                batch, gen, noise, cfg.drop_inputs, cfg.drop_renders, cfg.drop_both, denoiser=self.denoiser
            )
            acc.backward(loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                grad_norm = acc.clip_grad_norm_(self.denoiser.parameters(), cfg.max_grad_norm)
            self.optimizer.step()
            self.lr_scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
        return loss, logs, grad_norm

    def _finish_step(self, step_loss: float, logs: Dict[str, float], grad_norm, t_last: float) -> float:
        """After an optimiser step: EMA, log, checkpoint and validate on their schedules; returns the log time."""
        cfg = self.cfg
        self.step += 1
        if self.ema is not None:
            self.ema.step(self.denoiser.parameters())
        if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
            now = time.time()
            self._log_step(step_loss, logs, grad_norm, now - t_last)
            t_last = now
        if cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0:
            self.save_checkpoint()
        if cfg.validate_every > 0 and self.step % cfg.validate_every == 0:
            self.validate()
        return t_last

    def train(self) -> TrainResult:
        """Resume or start, train to ``max_steps``, write the final checkpoint and latest/."""
        cfg, acc = self.cfg, self.accelerator
        vae_losses = self._start()
        loader = self._loader()
        losses: Dict[int, float] = {}
        bar = tqdm(
            total=cfg.max_steps,
            initial=self.step,
            desc="train diffusion",
            disable=not (cfg.progress and acc.is_local_main_process),
            dynamic_ncols=True,
        )
        micro, acc_loss, t_last = 0, 0.0, time.time()
        self.denoiser.train()
        for batch in loader:
            if self.step >= cfg.max_steps:
                break
            loss, logs, grad_norm = self._micro_step(batch, micro)
            acc_loss += float(acc.gather(loss.detach()[None]).mean())
            micro += 1
            if not acc.sync_gradients:
                continue
            step_loss = acc_loss / micro
            micro, acc_loss = 0, 0.0
            t_last = self._finish_step(step_loss, logs, grad_norm, t_last)
            losses[self.step] = step_loss
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
        bar.close()
        if not cfg.checkpoint_every or self.step % cfg.checkpoint_every:
            self.save_checkpoint()
        elif not losses and acc.is_main_process:
            # nothing left to train (resumed at the end): a run killed between its last checkpoint and the export
            # left latest/ older than that checkpoint (or missing)
            self.export(self.out / "latest")
        acc.end_training()
        return TrainResult(step=self.step, losses=losses, output_dir=self.out, vae_losses=vae_losses)

    def validate(self) -> List[Path]:
        """Sample fixed validation clips with the EMA weights (:func:`~itergen_ns.diffusion.validation.validate`)."""
        return validate(self)


def train(cfg: TrainDiffusionConfig) -> TrainResult:
    """Run (or resume) a training run; returns the per-step losses of this call."""
    return Trainer(cfg).train()


def main() -> None:
    cfg = tyro.cli(TrainDiffusionConfig)
    result = train(cfg)
    print(f"trained to step {result.step}; model for itergen: {result.output_dir / 'latest'}")


if __name__ == "__main__":
    main()
