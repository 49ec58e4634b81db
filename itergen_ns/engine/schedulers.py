"""Learning-rate schedules whose state holds plain Python floats, so checkpoints load with ``weights_only=True``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Type

from torch.optim import Optimizer, lr_scheduler

from nerfstudio.engine.schedulers import ExponentialDecayScheduler, ExponentialDecaySchedulerConfig


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
