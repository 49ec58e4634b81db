"""Method entry points (``nerfstudio.method_configs``): ``itergen-splatfacto`` (sparse-view baseline) and
``itergen`` (diffusion in the loop). Defaults run on CUDA when present, else on CPU.

Importing this module (nerfstudio does, for every ``ns-*`` command) makes bad input one line on stderr instead of a
traceback (``itergen_ns.errors``; ``ITERGEN_DEBUG=1`` keeps the traceback).
"""

from __future__ import annotations


from typing import Type, TypeVar

import torch

from nerfstudio.configs.base_config import MachineConfig, ViewerConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from itergen_ns import errors
from itergen_ns.engine.schedulers import FloatExponentialDecaySchedulerConfig
from itergen_ns.engine.trainer import ItergenTrainer
from itergen_ns.data.datamanager import SparseViewDatamanagerConfig
from itergen_ns.itergen.datamanager import IterGenDataManagerConfig
from itergen_ns.itergen.pipeline import IterGenPipelineConfig
from itergen_ns.models.itergen_model import IterGenModelConfig
from itergen_ns.models.splatfacto import IterGenSplatfactoModelConfig

DEFAULT_STEPS = 5000

errors.install_excepthook()


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


ModelConfigT = TypeVar("ModelConfigT", bound=IterGenSplatfactoModelConfig)


def sparse_splatfacto_model(config_cls: Type[ModelConfigT] = IterGenSplatfactoModelConfig) -> ModelConfigT:  # type: ignore[assignment]
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
