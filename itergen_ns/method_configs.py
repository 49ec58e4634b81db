"""Method entry points (``nerfstudio.method_configs``): ``itergen-splatfacto`` (sparse-view baseline) and
``itergen`` (diffusion in the loop). Defaults run on CUDA when present, else on CPU.

Importing this module (nerfstudio does, for every ``ns-*`` command) makes bad input one line on stderr instead of a
traceback (``itergen_ns.errors``; ``ITERGEN_DEBUG=1`` keeps the traceback).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Type

import torch
from torch.optim import Optimizer, lr_scheduler

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import Trainer, TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from itergen_ns import errors
from itergen_ns.data.datamanager import SparseViewDatamanagerConfig
from itergen_ns.itergen.datamanager import IterGenDataManagerConfig
from itergen_ns.itergen.pipeline import IterGenPipelineConfig
from itergen_ns.models.itergen_model import IterGenModelConfig
from itergen_ns.models.splatfacto import IterGenSplatfactoModelConfig

DEFAULT_STEPS = 5000

errors.install_excepthook()

SETUP_FILES = ("config.yml", "dataparser_transforms.json")
"""What a run writes before its first step (``ns-train`` saves config.yml before set-up)."""


class ItergenTrainer(Trainer):
    """nerfstudio's Trainer; a set-up that fails on bad input (before any checkpoint) leaves no run folder behind,
    and checkpoints are written atomically (a kill mid-save never leaves a truncated ``step-*.ckpt``)."""

    def save_checkpoint(self, step: int) -> None:
        """nerfstudio 1.1.5's ``save_checkpoint`` (same contents, same clean-up), written to a hidden temporary
        beside the checkpoint folder and renamed in: ``--load-dir`` lists every file of that folder, so no
        temporary may ever be inside it."""
        ckpt_dir = Path(self.checkpoint_dir)
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        ckpt_path = ckpt_dir / f"step-{step:09d}.ckpt"
        tmp = ckpt_dir.parent / f".{ckpt_path.name}.tmp-{os.getpid()}"
        pipeline = self.pipeline.module if hasattr(self.pipeline, "module") else self.pipeline  # type: ignore
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        try:
            torch.save(state, tmp)
            os.replace(tmp, ckpt_path)
        finally:
            tmp.unlink(missing_ok=True)
        if self.config.save_only_latest_checkpoint:
            for f in ckpt_dir.glob("*.ckpt"):
                if f != ckpt_path:
                    f.unlink()

    def setup(self, *args, **kwargs) -> None:
        try:
            super().setup(*args, **kwargs)
        except Exception as err:
            if errors.is_input_error(err):
                self._remove_unstarted_run()
            raise

    def _remove_unstarted_run(self) -> None:
        base = Path(self.base_dir)
        if not base.is_dir() or any(base.rglob("*.ckpt")):
            return
        for name in SETUP_FILES:
            (base / name).unlink(missing_ok=True)
        # the run folder and its parents up to --output-dir, where nothing else is in them
        stop = Path(self.config.output_dir).resolve()
        folder = base.resolve()
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                break
            folder = folder.parent


class FloatExponentialDecayScheduler(ExponentialDecayScheduler):
    """nerfstudio's exponential decay with warm-up, computed in Python floats.

    nerfstudio's version returns numpy scalars, which end up in the optimiser/scheduler state of every checkpoint;
    torch>=2.6 loads checkpoints with ``weights_only=True`` and refuses them, so ``ns-eval``/``ns-render`` failed.
    """

    config: "FloatExponentialDecaySchedulerConfig"

    def get_scheduler(self, optimizer: Optimizer, lr_init: float) -> lr_scheduler.LRScheduler:
        cfg = self.config
        lr_final = lr_init if cfg.lr_final is None else cfg.lr_final

        def func(step: int) -> float:
            if step < cfg.warmup_steps:
                frac = min(max(step / cfg.warmup_steps, 0.0), 1.0)
                ramp = math.sin(0.5 * math.pi * frac) if cfg.ramp == "cosine" else frac
                lr = cfg.lr_pre_warmup + (lr_init - cfg.lr_pre_warmup) * ramp
            else:
                t = min(max((step - cfg.warmup_steps) / max(cfg.max_steps - cfg.warmup_steps, 1), 0.0), 1.0)
                lr = math.exp(math.log(lr_init) * (1 - t) + math.log(lr_final) * t)
            return float(lr / lr_init)

        return lr_scheduler.LambdaLR(optimizer, lr_lambda=func)


@dataclass
class FloatExponentialDecaySchedulerConfig(ExponentialDecaySchedulerConfig):
    """ExponentialDecaySchedulerConfig whose checkpoints hold plain floats (loadable with weights_only=True)."""

    _target: Type = field(default_factory=lambda: FloatExponentialDecayScheduler)


def gaussian_optimizers(max_steps: int = DEFAULT_STEPS) -> dict:
    """Splatfacto's per-parameter Adam settings, with the means' decay stretched over ``max_steps``."""

    def adam(lr: float) -> dict:
        return {"optimizer": AdamOptimizerConfig(lr=lr, eps=1e-15), "scheduler": None}

    return {
        "means": {
            "optimizer": AdamOptimizerConfig(lr=1.6e-4, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps),
        },
        "features_dc": adam(0.0025),
        "features_rest": adam(0.0025 / 20),
        "opacities": adam(0.05),
        "scales": adam(0.005),
        "quats": adam(0.001),
        "camera_opt": {
            "optimizer": AdamOptimizerConfig(lr=1e-4, eps=1e-15),
            "scheduler": FloatExponentialDecaySchedulerConfig(lr_final=5e-7, max_steps=max_steps, warmup_steps=500),
        },
    }


def default_machine() -> MachineConfig:
    return MachineConfig(device_type="cuda" if torch.cuda.is_available() else "cpu")


def sparse_splatfacto_model(config_cls=IterGenSplatfactoModelConfig) -> IterGenSplatfactoModelConfig:
    """Splatfacto settings for a few small input images: no resolution warm-up, densification over the run."""
    return config_cls(
        num_downscales=0,
        warmup_length=300,
        refine_every=100,
        stop_split_at=DEFAULT_STEPS // 2,
        sh_degree_interval=500,
    )


def trainer_config(method_name: str, pipeline) -> TrainerConfig:
    return TrainerConfig(
        _target=ItergenTrainer,
        method_name=method_name,
        steps_per_eval_image=250,
        steps_per_eval_batch=0,
        steps_per_save=1000,
        steps_per_eval_all_images=DEFAULT_STEPS,
        max_num_iterations=DEFAULT_STEPS,
        mixed_precision=False,
        machine=default_machine(),
        pipeline=pipeline,
        optimizers=gaussian_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


itergen_splatfacto = MethodSpecification(
    config=trainer_config(
        "itergen-splatfacto",
        VanillaPipelineConfig(datamanager=SparseViewDatamanagerConfig(), model=sparse_splatfacto_model()),
    ),
    description="Sparse-view Gaussian splatting baseline (splatfacto from N input views; CPU fallback rasterizer)",
)

itergen = MethodSpecification(
    config=trainer_config(
        "itergen",
        IterGenPipelineConfig(
            datamanager=IterGenDataManagerConfig(),
            model=sparse_splatfacto_model(IterGenModelConfig),
        ),
    ),
    description="IterGen: sparse-view splatting against views sampled by a render-conditioned video diffusion model",
)
