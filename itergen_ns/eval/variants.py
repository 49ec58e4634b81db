"""The rows of ``itergen eval``'s results table: a registered nerfstudio method plus config overrides (itergen,
its ablations and the splatfacto baseline), and the signature of a custom row for tests and extensions."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np


@dataclass(frozen=True)
class MethodVariant:
    """A row of the results table: a registered method plus config overrides."""

    method: str
    overrides: Tuple[Tuple[str, object], ...] = ()
    stochastic: bool = False
    uses_generator: bool = False
    generator: str = "main"
    """Which trained model the itergen rows use: "main" (--generator-checkpoint) or "no_render_noise"
    (--generator-checkpoint-no-render-noise, a model trained without conditioning noise)."""


VARIANTS: Dict[str, MethodVariant] = {
    "itergen-splatfacto": MethodVariant("itergen-splatfacto"),
    "itergen": MethodVariant("itergen", stochastic=True, uses_generator=True),
    "itergen-one-shot": MethodVariant(
        "itergen", (("pipeline.generation.one_shot", True),), stochastic=True, uses_generator=True
    ),
    "itergen-random-poses": MethodVariant(
        "itergen", (("pipeline.generation.pose_sampler.order", "random"),), stochastic=True, uses_generator=True
    ),
    # The paper's ablation: a model *trained* without conditioning noise, sampled without it (its SamplingConfig).
    "itergen-no-render-noise": MethodVariant(
        "itergen", stochastic=True, uses_generator=True, generator="no_render_noise"
    ),
}

# A custom method for tests/extensions: (scene, num_views, sample, run_dir) -> (renders [F,H,W,3], gts, input_idx)
CustomMethod = Callable[[Path, int, int, Path], Tuple[np.ndarray, np.ndarray, List[int]]]
