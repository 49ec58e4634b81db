"""Standalone training of P_theta on snapshot shards with HF ``accelerate`` (CPU, one GPU, many GPUs/nodes).

    python -m itergen_ns.diffusion.train --data snapshots/x --model tiny --max-steps 2000
    accelerate launch -m itergen_ns.diffusion.train --data snapshots/hydrant --model svd \\
        --init /models/stable-video-diffusion-img2vid --dino /models/dinov2-base --mixed-precision bf16

Output directory layout::

    OUT/checkpoints/step_XXXXXXXX/   accelerate state (model, optimizer, lr scheduler, EMA, RNG) + trainer_state.json
    OUT/latest/                      save_pretrained of the EMA weights: what ``itergen`` loads
    OUT/logs/                        tensorboard scalars
    OUT/validation/step_XXXXXXXX_*.{png,mp4}   render conditioning | sample | ground truth

Checkpoints are written to a temporary directory and renamed into place (old ones are renamed away before
they are deleted), so a killed run never leaves a half-written or half-deleted ``step_*`` behind. Resuming
(``--resume latest`` or a checkpoint path) restores everything, and because training items and noise are pure
functions of (seed, step, slot in the global batch), the resumed run continues exactly as the interrupted one
would have.

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
import json
import os
import shutil
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import torch
import tyro
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, broadcast_object_list
from diffusers.optimization import get_scheduler
from diffusers.training_utils import EMAModel
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from itergen_ns import compat, errors, io
from itergen_ns.diffusion.clip_stats import measure_clip_statistics
from itergen_ns.diffusion.data import SnapshotClipDataset, StepSampler
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.vae_fit import fit_vae
from itergen_ns.diffusion.train_config import (
    TRAINER_STATE,
    TrainDiffusionConfig,
    TrainResult,
    accumulation_steps,
    build_model_config,
    mixed_precision_mode,
    resolve_checkpoint,
    step_generator,
)
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
        self.dataset = self._dataset(cfg.seed)
        self.model.config.clip_statistics = measure_clip_statistics(
            [np.asarray(shard.c2w) for shard in self.dataset.shards], self.model.num_frames, cfg.frame_stride
        )
        self.vae_fitted = self.model_config.vae.pretrained is None and self._vae_fit_steps() > 0
        self.latent_cache = None
        if cfg.cache_latents and self.model_config.vae.pretrained is not None:
            self.latent_cache = self._build_latent_cache()
            self.dataset.attach_latents(self.latent_cache)

        denoiser = self.model.denoiser
        denoiser.train()
        self.optimizer = torch.optim.AdamW(
            [p for p in denoiser.parameters() if p.requires_grad],
            lr=cfg.learning_rate,
            betas=(cfg.adam_beta1, cfg.adam_beta2),
            weight_decay=cfg.adam_weight_decay,
            eps=cfg.adam_epsilon,
        )
        self.lr_scheduler = get_scheduler(
            cfg.lr_scheduler,
            optimizer=self.optimizer,
            num_warmup_steps=cfg.lr_warmup_steps * acc.num_processes,
            num_training_steps=cfg.max_steps * acc.num_processes,
        )
        self.ema = (
            EMAModel(denoiser.parameters(), decay=cfg.ema_decay, use_ema_warmup=True, power=cfg.ema_power)
            if cfg.use_ema
            else None
        )
        self.denoiser, self.optimizer, self.lr_scheduler = acc.prepare(denoiser, self.optimizer, self.lr_scheduler)
        if self.ema is not None:
            self.ema.to(acc.device)
            acc.register_for_checkpointing(self.ema)
        if self.vae_fitted:
            acc.register_for_checkpointing(self.model.vae)
        self.step = 0

    def _dataset(self, seed: int, length: int = 1_000_000) -> SnapshotClipDataset:
        cfg, m = self.cfg, self.model
        return SnapshotClipDataset(
            cfg.data,
            m.height,
            m.width,
            m.num_frames,
            m.config.max_input_views,
            seed=seed,
            frame_stride=cfg.frame_stride,
            extra_input_prob=cfg.extra_input_prob,
            latent_shape=(m.latent_channels, *m.latent_hw),
            use_render_latents=cfg.use_render_latents and not self._vae_fit_steps(),
            length=length,
            warped_input=m.config.needs_depth,
        )

    def _build_latent_cache(self):
        from itergen_ns.diffusion.latent_cache import build_latent_cache

        m = self.model
        tag = f"{self.model_config.vae.pretrained}|{m.latent_channels}x{m.latent_hw}|{m.scaling_factor}"
        return build_latent_cache(
            self.dataset.shards,
            (m.height, m.width),
            lambda images: m.encode_latents(images.to(m.device)).cpu(),
            tag,
            cache_dir=self.out / "latent_cache" if self.accelerator.is_main_process else None,
            progress=self.cfg.progress and self.accelerator.is_local_main_process,
            warped=m.config.needs_depth,
        )

    def _vae_fit_steps(self) -> int:
        if self.cfg.vae_fit_steps is not None:
            return self.cfg.vae_fit_steps
        return 400 if self.model_config.vae.pretrained is None else 0

    # ------------------------------------------------------------------------------------------ state
    def _cast_frozen(self) -> None:
        if self.weight_dtype == torch.float32:
            return
        self.model.vae.to(dtype=self.weight_dtype)
        self.model.image_encoder.to(dtype=self.weight_dtype)

    def resume(self, resume: str) -> Path:
        ckpt = resolve_checkpoint(self.out, resume)
        state = json.loads((ckpt / TRAINER_STATE).read_text())
        self._check_checkpoint_geometry(ckpt, state)
        try:
            self.accelerator.load_state(str(ckpt))
        except Exception as err:  # a truncated file, or weights of another architecture (size mismatch)
            if not (isinstance(err, RuntimeError) or errors.is_input_error(err)):
                raise
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next(
                (line for line in lines if "size mismatch" in line), lines[0] if lines else type(err).__name__
            )
            raise errors.InputError(
                f"{ckpt}: cannot resume from this checkpoint ({type(err).__name__}: {detail}); expected one written "
                "by a run with the same --model and --model-overrides"
            ) from err
        self.step = int(state["step"])
        self._align_lr_schedule()
        if state.get("vae_scaling_factor") is not None:
            self.model.vae.register_to_config(scaling_factor=state["vae_scaling_factor"])
        if state.get("vae_fitted"):
            self.model.config.vae.pretrained = None
        return ckpt

    def _geometry(self) -> Dict[str, int]:
        m = self.model
        return {"num_frames": int(m.num_frames), "height": int(m.height), "width": int(m.width),
                "latent_channels": int(m.latent_channels)}  # fmt: skip

    def _check_checkpoint_geometry(self, ckpt: Path, state: Dict) -> None:
        """The checkpoint's frames / resolution / latent channels (recorded in trainer_state.json) are this model's."""
        for key, value in self._geometry().items():
            if key in state and int(state[key]) != value:
                raise errors.InputError(
                    f"{ckpt / TRAINER_STATE}: {key} is {state[key]}, but this run's model has {value} "
                    "(--model / --model-overrides); resume with the settings the checkpoint was trained with"
                )

    def _align_lr_schedule(self) -> None:
        """Put the learning-rate schedule at ``self.step``: accelerate advances it once per process and step, so a
        checkpoint written by N processes holds N x step, which is wrong under another process count."""
        sched = getattr(self.lr_scheduler, "scheduler", self.lr_scheduler)
        if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
            return
        sched.last_epoch = self.step * self.accelerator.num_processes
        groups = self.optimizer.param_groups
        for group, fn, base in zip(groups, sched.lr_lambdas, sched.base_lrs):
            group["lr"] = base * fn(sched.last_epoch)
        compat.set_last_lr(sched, [group["lr"] for group in groups])

    def _remove_temporaries(self) -> None:
        """Checkpoint temporaries of a killed run (half-written or half-deleted; never visible as step_*)."""
        if self.accelerator.is_main_process:
            io.remove_dead_temporaries(self.out / "checkpoints")

    def save_checkpoint(self) -> Path:
        """accelerate.save_state into a temp dir, then rename; prune old checkpoints; export EMA weights to latest/."""
        acc = self.accelerator
        root = self.out / "checkpoints"
        final = root / f"step_{self.step:08d}"
        lock = None
        tmp = [None]
        if acc.is_main_process:  # every process writes its part into the main process's locked temporary
            root.mkdir(parents=True, exist_ok=True)
            tmp = [io.temporary_sibling(final)]
            shutil.rmtree(tmp[0], ignore_errors=True)
            tmp[0].mkdir()
            lock = io.lock(tmp[0])
        tmp = Path(broadcast_object_list(tmp)[0])
        acc.wait_for_everyone()
        acc.save_state(str(tmp))
        acc.wait_for_everyone()
        if acc.is_main_process:
            state = {
                "step": self.step,
                "model_config": self.cfg.model,
                "vae_fitted": self.vae_fitted,
                "vae_scaling_factor": float(self.model.vae.config.scaling_factor),
                **self._geometry(),
                "time": time.time(),
            }
            (tmp / TRAINER_STATE).write_text(json.dumps(state, indent=2))
            if final.exists():
                io.remove_tree(final)
            os.rename(tmp, final)
            io.unlock(lock)
            for old in sorted(root.glob("step_*"))[: -max(self.cfg.keep_checkpoints, 1)]:
                io.remove_tree(old)
            self.export(self.out / "latest")
        acc.wait_for_everyone()
        return final

    def export(self, path: Path) -> Path:
        """save_pretrained of the model with EMA weights (training weights untouched)."""
        params = list(self.model.denoiser.parameters())
        if self.ema is not None:
            self.ema.store(params)
            self.ema.copy_to(params)
        try:
            return self.model.save_pretrained(path)
        finally:
            if self.ema is not None:
                self.ema.restore(params)

    # ------------------------------------------------------------------------------------------ loop
    def _start(self) -> List[float]:
        """Resume (``--resume``) or start: fit a from-scratch VAE first; returns the VAE fit's losses."""
        cfg, acc = self.cfg, self.accelerator
        vae_losses: List[float] = []
        self._remove_temporaries()
        resume = cfg.resume
        if resume == "auto":
            has_checkpoint = any((c / TRAINER_STATE).exists() for c in (self.out / "checkpoints").glob("step_*"))
            resume = "latest" if has_checkpoint else None
        if resume:
            ckpt = self.resume(resume)
            acc.print(f"resumed from {ckpt} at step {self.step}")
        elif self.vae_fitted:
            vae_losses = fit_vae(
                self.model.vae,
                self.dataset,
                self._vae_fit_steps(),
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

    def train(self) -> TrainResult:
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
            slot = micro * acc.num_processes + acc.process_index  # this micro-batch's place in the global batch
            gen = step_generator(cfg.seed, self.step, slot, 0, acc.device)
            noise = self.render_noise
            if cfg.render_noise_random:
                noise = torch.rand(cfg.batch_size, generator=gen, device=gen.device) * self.render_noise
            with acc.accumulate(self.denoiser):
                loss, logs = self.model.training_loss(
                    batch, gen, noise, cfg.drop_inputs, cfg.drop_renders, cfg.drop_both, denoiser=self.denoiser
                )
                acc.backward(loss)
                grad_norm = None
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    grad_norm = acc.clip_grad_norm_(self.denoiser.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.lr_scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            acc_loss += float(acc.gather(loss.detach()[None]).mean())
            micro += 1
            if not acc.sync_gradients:
                continue
            self.step += 1
            step_loss = acc_loss / micro
            micro, acc_loss = 0, 0.0
            losses[self.step] = step_loss
            if self.ema is not None:
                self.ema.step(self.denoiser.parameters())
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                now = time.time()
                self._log_step(step_loss, logs, grad_norm, now - t_last)
                t_last = now
            if cfg.checkpoint_every > 0 and self.step % cfg.checkpoint_every == 0:
                self.save_checkpoint()
            if cfg.validate_every > 0 and self.step % cfg.validate_every == 0:
                self.validate()
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
