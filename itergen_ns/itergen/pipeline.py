"""IterGenPipeline: where the 3D model, the generator and the datamanager meet.

Training builds the generator (weights are loaded here, so bad checkpoints fail before step 0) and a
:class:`~itergen_ns.itergen.generation.ClipGeneration` that renders the model, samples clips and fills the pool the
datamanager serves from; each step generation is refreshed before the batch is drawn. ``ns-eval`` / ``ns-render``
(test modes) never load the generator: the 3D checkpoint is all they need.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, List, Literal, Optional, Type

from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.pipelines.base_pipeline import VanillaPipeline, VanillaPipelineConfig

from itergen_ns.itergen.datamanager import IterGenDataManager, IterGenDataManagerConfig
from itergen_ns.itergen.generation import ClipGeneration, GenerationConfig
from itergen_ns.itergen.generator import Generator, GeneratorConfig
from itergen_ns.models.itergen_model import IterGenModelConfig


@dataclass
class IterGenPipelineConfig(VanillaPipelineConfig):
    _target: Type = field(default_factory=lambda: IterGenPipeline)
    datamanager: IterGenDataManagerConfig = field(default_factory=IterGenDataManagerConfig)
    model: IterGenModelConfig = field(default_factory=IterGenModelConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def generator_config(self) -> GeneratorConfig:
        """The generator settings the run uses: a set ``generation.num_generated_frames`` is also what the
        checkpoint must produce (checked at load), unless ``generator.expected_num_frames`` says otherwise."""
        frames = self.generator.expected_num_frames or self.generation.num_generated_frames
        return replace(self.generator, expected_num_frames=frames)


class IterGenPipeline(VanillaPipeline):
    config: IterGenPipelineConfig
    datamanager: IterGenDataManager

    def __init__(
        self,
        config: IterGenPipelineConfig,
        device: str,
        test_mode: Literal["test", "val", "inference"] = "val",
        world_size: int = 1,
        local_rank: int = 0,
        grad_scaler=None,
    ):
        super().__init__(config, device, test_mode, world_size, local_rank, grad_scaler)
        self.generator: Optional[Generator] = None
        self.generation: Optional[ClipGeneration] = None
        self._panel: Optional[Any] = None
        if test_mode == "val":
            self.generator = config.generator_config().setup(device=device)
            self.generation = self._build_generation(self.generator)

    def _build_generation(self, generator: Generator) -> ClipGeneration:
        dm = self.datamanager
        num_inputs = len(dm.train_dataset)
        if num_inputs > generator.max_input_views:
            raise ValueError(
                f"{num_inputs} input views, but the diffusion model is conditioned on at most "
                f"{generator.max_input_views}; lower --pipeline.datamanager.num-input-views"
            )
        inputs = dm.input_views((generator.height, generator.width))
        generation = ClipGeneration(self.config.generation, self.model, generator, inputs, dm.train_dataset.cameras)
        dm.serve_generated(generation.pool, generation.seed)
        return generation

    def get_train_loss_dict(self, step: int):
        if self.generation is not None:
            self.generation.refresh(step)
        return super().get_train_loss_dict(step)

    def get_training_callbacks(self, attrs: TrainingCallbackAttributes) -> List[TrainingCallback]:
        callbacks = super().get_training_callbacks(attrs)
        trainer = attrs.trainer
        trainer_config = getattr(trainer, "config", None)
        if trainer_config is not None and self.generation is not None:  # one-shot generates as many clips as this run
            self.generation.planned_steps = int(trainer_config.max_num_iterations)

        def update_viewer(step: int) -> None:
            viewer = getattr(trainer, "viewer_state", None) if trainer is not None else None
            server = getattr(viewer, "viser_server", None)
            if server is None or not hasattr(server, "scene") or self.generation is None:
                return
            if self._panel is None:
                from itergen_ns.itergen.viewer import GeneratedViewsPanel

                self._panel = GeneratedViewsPanel(server)
            gen = self.generation
            self._panel.update(gen.latest_clip(), len(gen.history), gen.timings)

        def finish(step: int) -> None:
            if self.generation is not None:
                self.generation.wait()

        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], update_viewer))
        callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN], finish))
        return callbacks

    @property
    def panel(self) -> Optional[object]:
        return self._panel
