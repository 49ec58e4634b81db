"""Standalone training of P_theta on snapshot shards with HF ``accelerate`` (CPU, one GPU, many GPUs/nodes).

    python -m itergen_ns.scripts.train_diffusion --data snapshots/x --model tiny --max-steps 2000
    accelerate launch -m itergen_ns.scripts.train_diffusion --data snapshots/hydrant --model svd \\
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

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
from itergen_ns.diffusion.configs import DiffusionModelConfig, get_model_config
from itergen_ns.diffusion.data import SnapshotClipDataset, StepSampler
from itergen_ns.diffusion.model import IterGenDiffusionModel
from itergen_ns.diffusion.sampling import SamplingConfig
from itergen_ns.diffusion.pipeline import IterGenVideoPipeline
from itergen_ns.diffusion.vae_fit import fit_vae
from itergen_ns.diffusion.visualize import save_clip_grid, save_side_by_side_video

TRAINER_STATE = "trainer_state.json"


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
    overrides = {
        k: int(v) if k in int_fields and isinstance(v, float) and float(v).is_integer() else v
        for k, v in cfg.model_overrides.items()
    }
    if cfg.extra_maps:
        overrides["extra_maps"] = tuple(cfg.extra_maps)
    if cfg.output_parameterization is not None:
        overrides["output_parameterization"] = cfg.output_parameterization
    overrides["allow_download"] = cfg.allow_download
    if cfg.model == "svd":
        kwargs = dict(random_init=cfg.random_init)
        if cfg.init:
            kwargs["init"] = cfg.init
        if cfg.dino:
            kwargs["dino"] = cfg.dino
        return get_model_config("svd", **kwargs, **overrides)
    if cfg.init or cfg.dino:
        raise ValueError("--init/--dino apply to the svd model config (add --model svd); tiny is randomly initialised")
    return get_model_config(cfg.model, **overrides)


def _mixed_precision(choice: str) -> str:
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


def resolve_checkpoint(output_dir: Path, resume: str) -> Path:
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).exists():
            raise FileNotFoundError(f"{path}: not a training checkpoint (no {TRAINER_STATE})")
        return path
    ckpts = sorted((output_dir / "checkpoints").glob("step_*"))
    ckpts = [c for c in ckpts if (c / TRAINER_STATE).exists()]
    if not ckpts:
        raise FileNotFoundError(f"--resume latest: no checkpoints under {output_dir / 'checkpoints'}")
    return ckpts[-1]


class Trainer:
    """Owns the accelerator, model, optimiser, EMA and the loop; one instance per training run."""

    def __init__(self, cfg: TrainDiffusionConfig):
        self.cfg = cfg
        self.out = Path(cfg.output_dir)
        self.accelerator = Accelerator(
            mixed_precision=_mixed_precision(cfg.mixed_precision),
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

    @torch.no_grad()
    def validate(self) -> List[Path]:
        """Sample fixed validation clips with the EMA weights; save PNG grids and mp4s; log their MSE and generator gain."""
        from itergen_ns.diffusion.clip_metrics import clip_gain

        acc = self.accelerator
        written: List[Path] = []
        if acc.is_main_process:
            val = self.dataset.with_seed(self.cfg.seed + 7919, length=max(self.cfg.validation_clips, 1))
            params = list(self.model.denoiser.parameters())
            if self.ema is not None:
                self.ema.store(params)
                self.ema.copy_to(params)
            self.model.denoiser.eval()
            pipe = IterGenVideoPipeline(self.model)
            mses, gains = [], []
            try:
                for i in range(self.cfg.validation_clips):
                    item = val[i]
                    mask = item["input_mask"]
                    warped = item.get("warped")
                    if warped is None and "warped_latents" in item:  # cached: its autoencoder round trip
                        with torch.no_grad():
                            warped = self.model.decode_latents(item["warped_latents"][None].to(self.model.device))[0]
                    with acc.autocast():
                        sample = (
                            pipe(
                                item["renders"],
                                item["input_images"][mask],
                                item["input_c2w"][mask],
                                item["target_c2w"],
                                num_inference_steps=self.cfg.validation_inference_steps,
                                render_noise=self.render_noise,
                                generator=torch.Generator().manual_seed(self.cfg.seed + i),
                                target_intrinsics=item["target_intrinsics"],
                                warped_inputs=None if warped is None else warped.float().cpu(),
                            )
                            .float()
                            .cpu()
                        )
                    rows = [item["renders"], sample, item["frames"]]
                    mses.append(float(((sample - item["frames"]) ** 2).mean()))
                    gains.append(clip_gain(item["renders"], sample, item["frames"], item["input_images"][mask][:1]))
                    stem = self.out / "validation" / f"step_{self.step:08d}_clip{i}"
                    scale = max(1, 128 // self.model.height)
                    written.append(save_clip_grid(stem.with_suffix(".png"), rows, scale=scale))
                    try:
                        written.append(save_side_by_side_video(stem.with_suffix(".mp4"), rows, scale=scale))
                    except (OSError, RuntimeError, ValueError) as err:  # ffmpeg missing: keep the PNGs
                        acc.print(f"validation video not written ({err})")
            finally:
                if self.ema is not None:
                    self.ema.restore(params)
                self.model.denoiser.train()
            if mses:
                gain = {f"val/{k}": sum(g[k] for g in gains) / len(gains) for k in gains[0]}  # as `itergen gain`
                acc.log({"val/mse": sum(mses) / len(mses), **gain}, step=self.step)
        acc.wait_for_everyone()
        return written


def train(cfg: TrainDiffusionConfig) -> TrainResult:
    """Run (or resume) a training run; returns the per-step losses of this call."""
    return Trainer(cfg).train()


def main() -> None:
    cfg = tyro.cli(TrainDiffusionConfig)
    result = train(cfg)
    print(f"trained to step {result.step}; model for itergen: {result.output_dir / 'latest'}")


if __name__ == "__main__":
    main()
