"""Train a registered method programmatically through nerfstudio's own ``Trainer``.

The exporter, `itergen train-baseline` and the eval harness all train this way, so what they measure is
exactly what `ns-train <method>` does; extra per-step work (snapshot renders) is added as TrainingCallbacks.
"""

from __future__ import annotations

import copy
import dataclasses
import random
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, Optional, Sequence, cast

import numpy as np
import torch
import yaml

from nerfstudio.engine.callbacks import TrainingCallback
from nerfstudio.engine.trainer import Trainer, TrainerConfig

from itergen_ns import compat


def method_config(method: str) -> TrainerConfig:
    """A fresh copy of a registered method's config (built-in or plugin)."""
    from nerfstudio.configs.method_configs import all_methods

    if method not in all_methods:
        raise ValueError(f"unknown method {method!r}; registered: {', '.join(sorted(all_methods))}")
    return cast(TrainerConfig, copy.deepcopy(all_methods[method]))


def set_num_steps(config: TrainerConfig, steps: int) -> None:
    """Set the iteration count and stretch the schedules that depend on it (lr decay, densification stop)."""
    config.max_num_iterations = steps
    config.steps_per_eval_all_images = max(steps + 1, config.steps_per_eval_all_images)
    for opt in config.optimizers.values():
        sched = opt.get("scheduler")
        if sched is not None and hasattr(sched, "max_steps"):
            sched.max_steps = steps
            if hasattr(sched, "warmup_steps"):
                sched.warmup_steps = min(sched.warmup_steps, steps // 4)
    model: Any = config.pipeline.model
    if hasattr(model, "stop_split_at"):  # splatfacto-like
        model.stop_split_at = max(1, steps // 2)
        model.warmup_length = min(model.warmup_length, max(1, steps // 10))
        model.refine_every = min(model.refine_every, max(1, steps // 10))
        model.sh_degree_interval = min(model.sh_degree_interval, max(1, steps // 6))


@dataclass
class TrainSpec:
    """What to train: method, scene, input split, schedule and where outputs go."""

    method: str
    data: Path
    output_dir: Path
    num_input_views: int = 3
    input_view_seed: int = 0
    steps: int = 1000
    seed: int = 42
    experiment_name: Optional[str] = None
    vis: str = "tensorboard"
    overrides: Dict[str, object] = field(default_factory=dict)
    """Dotted config paths -> values or command-line strings, e.g. {"pipeline.model.sh_degree": "1"}."""


def _coerce(raw, current, annotation: str = ""):
    """A command-line override string as the type of the field it replaces (YAML scalars / lists).

    ``annotation`` is the field's declared type (as text); it decides for fields whose value is None now.
    """
    if not isinstance(raw, str) or isinstance(current, str):
        return raw
    if isinstance(current, Path) or (current is None and "Path" in annotation):
        return Path(raw)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    if isinstance(value, list) and (isinstance(current, tuple) or "Tuple" in annotation or "tuple" in annotation):
        return tuple(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def apply_overrides(config: TrainerConfig, overrides: Dict[str, object]) -> None:
    """Set dotted config paths (``pipeline.model.sh_degree``; dict keys work too) to values or value strings."""
    for dotted, raw in overrides.items():
        *parents, last = dotted.split(".")
        obj: Any = config
        for name in parents:
            obj = obj[name] if isinstance(obj, dict) and name in obj else getattr(obj, name, None)
            if obj is None:
                raise ValueError(f"override {dotted!r}: the config has no {name!r} on that path")
        if isinstance(obj, dict):
            obj[last] = _coerce(raw, obj.get(last))
        elif hasattr(obj, last):
            fields = {f.name: str(f.type) for f in dataclasses.fields(obj)} if dataclasses.is_dataclass(obj) else {}
            setattr(obj, last, _coerce(raw, getattr(obj, last), fields.get(last, "")))
        else:
            raise ValueError(f"override {dotted!r}: {type(obj).__name__} has no field {last!r}")


def build_config(spec: TrainSpec) -> TrainerConfig:
    config = method_config(spec.method)
    config.output_dir = Path(spec.output_dir)
    config.experiment_name = spec.experiment_name or Path(spec.data).name
    config.timestamp = "run"
    config.vis = cast(Any, spec.vis)  # nerfstudio's Literal; an unknown name fails in its Trainer
    config.viewer.quit_on_train_completion = True
    config.machine.seed = spec.seed
    config.save_only_latest_checkpoint = True
    config.steps_per_save = max(spec.steps, 1)
    config.steps_per_eval_image = spec.steps + 1
    config.steps_per_eval_batch = 0
    config.logging.local_writer.enable = False
    datamanager: Any = config.pipeline.datamanager  # the project's sparse-view datamanagers
    datamanager.data = Path(spec.data)
    datamanager.num_input_views = spec.num_input_views
    datamanager.input_view_seed = spec.input_view_seed
    if hasattr(datamanager, "init_seed"):
        datamanager.init_seed = spec.seed
    set_num_steps(config, spec.steps)
    apply_overrides(config, spec.overrides)
    return config


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(
    config: TrainerConfig,
    callbacks: Sequence[TrainingCallback] = (),
    on_setup: Optional[Callable[[Trainer], None]] = None,
) -> Trainer:
    """Set up and run nerfstudio's Trainer with extra callbacks; returns the trained trainer.

    ``on_setup(trainer)`` runs after set-up and before the first step (data and model exist by then).
    """
    seed_everything(config.machine.seed)
    config.get_base_dir().mkdir(parents=True, exist_ok=True)
    config.save_config()
    with scoped_event_writers():
        trainer = config.setup(local_rank=0, world_size=1)
        trainer.setup()
        trainer.callbacks.extend(callbacks)
        if on_setup is not None:
            on_setup(trainer)
        trainer.train()
    return trainer


@contextmanager
def scoped_event_writers() -> Iterator[None]:
    """Close and drop the event writers a Trainer registers in nerfstudio's global list, so consecutive runs
    in one process (exporter, eval harness, demo) don't log into each other's folders."""
    writers = compat.event_writers()
    before = len(writers)
    try:
        yield
    finally:
        for w in writers[before:]:
            tb = getattr(w, "tb_writer", None)
            if tb is not None:
                tb.close()
        del writers[before:]
        compat.clear_event_storage()
