"""IterGenPipeline: VanillaPipeline that hands the model and the generator to the datamanager (nothing else)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional, Type

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from itergen_ns.itergen.datamanager import IterGenDataManagerConfig
from itergen_ns.itergen.generator import GeneratorConfig
from itergen_ns.models.itergen_model import IterGenModelConfig


@dataclass
class IterGenPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: IterGenPipeline)
    datamanager: IterGenDataManagerConfig = field(default_factory=IterGenDataManagerConfig)
    model: IterGenModelConfig = field(default_factory=IterGenModelConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)


class IterGenPipeline(VanillaPipeline):
    """Training builds the generator (weights are loaded here, so bad checkpoints fail before step 0);
    ns-eval / ns-render (test modes) never load it: the 3D checkpoint is all they need."""

    config: IterGenPipelineConfig

    def __init__(
        self,
        config: IterGenPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler=None,
    ):
        if test_mode == "val" and config.datamanager.num_generated_frames is not None:
            config.generator.expected_num_frames = config.generator.expected_num_frames or config.datamanager.num_generated_frames
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.generator = None
        self._panel = None
        if test_mode == "val":
            self.generator = config.generator.setup(device=device)
            self.datamanager.attach(self.model, self.generator)

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(attrs)
        trainer = attrs.trainer
        trainer_config = getattr(trainer, "config", None)
        if trainer_config is not None:  # the one-shot ablation generates as many clips as this run would
            self.datamanager.planned_steps = int(trainer_config.max_num_iterations)

        def update_viewer(step: int) -> None:
            viewer = getattr(trainer, "viewer_state", None) if trainer is not None else None
            server = getattr(viewer, "viser_server", None)
            if server is None or not hasattr(server, "scene"):
                return
            if self._panel is None:
                from itergen_ns.itergen.viewer import GeneratedViewsPanel

                self._panel = GeneratedViewsPanel(server)
            dm = self.datamanager
            self._panel.update(dm.latest_clip(), len(dm.history), dm.timings)

        def finish(step: int) -> None:
            self.datamanager.wait_for_generation()

        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], update_viewer))
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], finish))
        return callbacks

    @property
    def panel(self) -> Optional[object]:
        return self._panel
