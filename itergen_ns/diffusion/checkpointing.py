"""Checkpoints of the diffusion trainer: find, write (atomically, pruned) and load accelerate states.

A checkpoint is ``OUT/checkpoints/step_XXXXXXXX/``: accelerate's ``save_state`` (model, optimiser, LR schedule,
EMA, RNG; every process writes its part) plus ``trainer_state.json`` (step, model preset, VAE scaling, geometry).
It is written into a locked temporary sibling and renamed into place, and old ones are renamed away before they are
deleted, so a killed run never leaves a half-written or half-deleted ``step_*`` (``io.remove_dead_temporaries``
clears what a killed writer left).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Dict, Optional

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list

from itergen_ns import compat, errors, io

TRAINER_STATE = "trainer_state.json"


def checkpoints_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def has_checkpoint(output_dir: Path) -> bool:
    return any((c / TRAINER_STATE).exists() for c in checkpoints_dir(output_dir).glob("step_*"))


def resolve_checkpoint(output_dir: Path, resume: str) -> Path:
    """``latest`` (the newest complete checkpoint under ``output_dir``) or an explicit checkpoint folder."""
    if resume != "latest":
        path = Path(resume)
        if not (path / TRAINER_STATE).exists():
            raise FileNotFoundError(f"{path}: not a training checkpoint (no {TRAINER_STATE})")
        return path
    ckpts = sorted(checkpoints_dir(output_dir).glob("step_*"))
    ckpts = [c for c in ckpts if (c / TRAINER_STATE).exists()]
    if not ckpts:
        raise FileNotFoundError(f"--resume latest: no checkpoints under {checkpoints_dir(output_dir)}")
    return ckpts[-1]


def check_geometry(ckpt: Path, state: Dict[str, Any], geometry: Dict[str, int]) -> None:
    """The checkpoint's frames / resolution / latent channels (recorded in trainer_state.json) are this model's."""
    for key, value in geometry.items():
        if key in state and int(state[key]) != value:
            raise errors.InputError(
                f"{ckpt / TRAINER_STATE}: {key} is {state[key]}, but this run's model has {value} "
                "(--model / --model-overrides); resume with the settings the checkpoint was trained with"
            )


def load_checkpoint(accelerator: Accelerator, ckpt: Path, geometry: Dict[str, int]) -> Dict[str, Any]:
    """Restore the accelerate state of ``ckpt`` and return its trainer state; one clear error if it does not fit."""
    state = json.loads((ckpt / TRAINER_STATE).read_text())
    check_geometry(ckpt, state, geometry)
    try:
        accelerator.load_state(str(ckpt))
    except Exception as err:  # a truncated file, or weights of another architecture (size mismatch)
        if not (isinstance(err, RuntimeError) or errors.is_input_error(err)):
            raise
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        detail = next((line for line in lines if "size mismatch" in line), lines[0] if lines else type(err).__name__)
        raise errors.InputError(
            f"{ckpt}: cannot resume from this checkpoint ({type(err).__name__}: {detail}); expected one written "
            "by a run with the same --model and --model-overrides"
        ) from err
    return state


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, state: Dict[str, Any], keep: int) -> Path:
    """Write ``step_<step>`` (every process saves its part into the main process's locked temporary), rename it
    into place and keep the newest ``keep`` checkpoints. Collective: every process calls it."""
    root = checkpoints_dir(output_dir)
    final = root / f"step_{step:08d}"
    lock = None
    tmp: list = [None]
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        tmp = [io.temporary_sibling(final)]
        shutil.rmtree(tmp[0], ignore_errors=True)
        tmp[0].mkdir()
        lock = io.lock(tmp[0])
    folder = Path(broadcast_object_list(tmp)[0])
    accelerator.wait_for_everyone()
    accelerator.save_state(str(folder))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (folder / TRAINER_STATE).write_text(json.dumps(state, indent=2))
        if final.exists():
            io.remove_tree(final)
        os.rename(folder, final)
        io.unlock(lock)
        for old in sorted(root.glob("step_*"))[: -max(keep, 1)]:
            io.remove_tree(old)
    return final


def remove_temporaries(accelerator: Accelerator, output_dir: Path) -> None:
    """Checkpoint temporaries of a killed run (half-written or half-deleted; never visible as step_*)."""
    if accelerator.is_main_process:
        io.remove_dead_temporaries(checkpoints_dir(output_dir))


def align_lr_schedule(lr_scheduler: Any, optimizer: torch.optim.Optimizer, step: int, num_processes: int) -> None:
    """Put the learning-rate schedule at ``step``: accelerate advances it once per process and step, so a
    checkpoint written by N processes holds N x step, which is wrong under another process count."""
    sched: Optional[Any] = getattr(lr_scheduler, "scheduler", lr_scheduler)
    if not isinstance(sched, torch.optim.lr_scheduler.LambdaLR):
        return
    sched.last_epoch = step * num_processes
    groups = optimizer.param_groups
    for group, fn, base in zip(groups, sched.lr_lambdas, sched.base_lrs):
        group["lr"] = base * fn(sched.last_epoch)
    compat.set_last_lr(sched, [group["lr"] for group in groups])


def export_with_ema(model: Any, ema: Optional[Any], path: Path) -> Path:
    """``model.save_pretrained(path)`` with the EMA weights swapped in (the training weights are restored after)."""
    params = list(model.denoiser.parameters())
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        return model.save_pretrained(path)
    finally:
        if ema is not None:
            ema.restore(params)
