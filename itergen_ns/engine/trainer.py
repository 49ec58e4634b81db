"""ItergenTrainer: nerfstudio's Trainer with atomic checkpoints, and no run folder left behind by a set-up that
fails on bad input."""

from __future__ import annotations

from pathlib import Path

import torch

from nerfstudio.engine.trainer import Trainer

from itergen_ns import errors
from itergen_ns.io import atomic_torch_save

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
        pipeline: torch.nn.Module = getattr(self.pipeline, "module", self.pipeline)  # DDP-wrapped or not
        state = {
            "step": step,
            "pipeline": pipeline.state_dict(),
            "optimizers": {k: v.state_dict() for (k, v) in self.optimizers.optimizers.items()},
            "schedulers": {k: v.state_dict() for (k, v) in self.optimizers.schedulers.items()},
            "scalers": self.grad_scaler.state_dict(),
        }
        atomic_torch_save(state, ckpt_path, temp_dir=ckpt_dir.parent)
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
