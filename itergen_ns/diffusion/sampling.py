"""How a trained P_theta is sampled, and what its training clips looked like: saved inside the model directory.

:class:`SamplingConfig` is the ONE place where sampling defaults live (steps, both guidance scales, the render-
noise std, the sampler kind). ``itergen train-diffusion`` writes it into the model directory with the
render-noise std it trained with, so a model is sampled the way it was trained; itergen and the gain tool
read it from there and apply only the overrides a user passes.

:class:`ClipStatistics` summarises the training clips' camera motion (angular step per frame, elevation,
zoom) so the pose sampler generates trajectories like the ones the model learned from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Dict, Literal, Optional

SAMPLER_KINDS = ("euler",)


@dataclass
class SamplingConfig:
    """Sampling defaults of one trained model (paper: CFG with a 3D scale < 1, noisy render conditioning)."""

    num_inference_steps: int = 10
    """Sampler steps per clip (few-step sampling is the main speed lever)."""
    guidance_3d: float = 0.9
    """CFG scale of the render condition; < 1 pulls toward the 3D-unconditional model (the paper's choice).
    0.9 is the best value below 1 in the sweep on validation scenes recorded in the README (gain rose
    monotonically with the scale; 0.9 was within noise of 1.0)."""
    guidance_input: float = 1.5
    """CFG scale of the input-image condition."""
    render_noise: float = 0.1
    """Std of the Gaussian noise on render latents; the trainer overwrites it with the std it trained with."""
    sampler: Literal["euler"] = "euler"
    """Sampler kind: "euler" = diffusers' EulerDiscreteScheduler in SVD's EDM configuration."""
    start_sigma: Optional[float] = None
    """None: the paper's sampling from pure noise. A value: SDEdit-style, start from the render latent noised to
    the first sampler level at or below this sigma and run only the remaining steps (a flagged departure)."""

    def validate(self) -> None:
        if self.num_inference_steps < 1:
            raise ValueError(f"sampling.num_inference_steps must be >= 1, got {self.num_inference_steps}")
        if self.render_noise < 0:
            raise ValueError(f"sampling.render_noise must be >= 0, got {self.render_noise}")
        if self.start_sigma is not None and self.start_sigma <= 0:
            raise ValueError(f"sampling.start_sigma must be > 0 or None, got {self.start_sigma}")
        if self.sampler not in SAMPLER_KINDS:
            raise ValueError(f"sampling.sampler must be one of {SAMPLER_KINDS}, got {self.sampler!r}")

    def with_overrides(self, **overrides: Optional[Any]) -> "SamplingConfig":
        """A copy with every override that is not None applied (None = keep the model's value)."""
        names = {f.name for f in dataclasses.fields(self)}
        bad = sorted(set(overrides) - names)
        if bad:
            raise TypeError(f"unknown SamplingConfig fields {bad}")
        out = dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})
        out.validate()
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "SamplingConfig":
        out = cls(**data)
        out.validate()
        return out


@dataclass
class ClipStatistics:
    """Camera motion of the training clips (measured by the trainer on its snapshot data)."""

    degrees_per_frame: float
    """Mean angle between consecutive frames' viewing directions seen from the orbit centre."""
    mean_elevation_degrees: float
    """Mean camera elevation above the capture's orbit plane (the pose sampler's prior with 1-2 inputs)."""
    elevation_std_degrees: float
    zoom_log_std: float
    """Std over clips of log(distance to centre at the last frame / at the first frame)."""
    num_clips: int

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ClipStatistics":
        return cls(**data)
