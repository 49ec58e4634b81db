"""One procedural capture: a hydrant-like object in an environment, seen by an inward orbit of cameras, sampled
from a seed and rendered by the analytic ray caster (byte-identical for the same seed)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple, Union

import numpy as np
import torch

from itergen_ns.data.procedural.environment import Environment, sample_environment
from itergen_ns.data.procedural.hydrant import HydrantObject, sample_hydrant
from itergen_ns.data.procedural.noise import ValueNoise
from itergen_ns.data.procedural.orbit import sample_orbit
from itergen_ns.data.procedural.raycast import render_views
from itergen_ns.errors import InputError

FrameCount = Union[int, Tuple[int, int], Sequence[int]]
Resolution = Union[int, Tuple[int, int], Sequence[int]]


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` of a collection: independent of how many scenes the collection has."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def _frame_count(rng: np.random.Generator, num_frames: FrameCount) -> int:
    if isinstance(num_frames, (int, np.integer)):
        lo = hi = int(num_frames)
    else:
        lo, hi = (int(v) for v in num_frames)
    if lo < 1 or hi < lo:
        raise InputError(
            f"num_frames (--num-frames) must be a positive int or a (min, max) range with min <= max, got {num_frames}"
        )
    return lo if lo == hi else int(rng.integers(lo, hi + 1))


def _image_size(resolution: Resolution) -> Tuple[int, int]:
    if isinstance(resolution, (int, np.integer)):
        w = h = int(resolution)
    else:
        w, h = (int(v) for v in resolution)
    if w < 8 or h < 8:
        raise InputError(f"resolution (--image-size) must be at least 8x8 pixels (width, height), got {resolution}")
    return w, h


@dataclass
class ProceduralScene:
    """One sampled scene: object, surroundings, pinhole intrinsics and the capture trajectory."""

    seed: int
    obj: HydrantObject
    env: Environment
    c2w: np.ndarray
    """[N, 3, 4] OpenGL camera-to-world, world z up, object base on z = 0."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    @property
    def num_frames(self) -> int:
        return int(self.c2w.shape[0])

    def render(
        self,
        c2w: Optional[np.ndarray] = None,
        supersample: int = 2,
        shadows: bool = True,
        show_object: bool = True,
        num_threads: Optional[int] = 1,
    ) -> Tuple[np.ndarray, np.ndarray]:
        """Images [N, H, W, 3] uint8 and masks [N, H, W] bool at ``c2w`` (default: the capture's own frames)."""
        poses = self.c2w if c2w is None else np.asarray(c2w, dtype=np.float64).reshape(-1, 3, 4)
        return render_views(
            self.obj,
            self.env,
            torch.from_numpy(poses),
            self.fx,
            self.fy,
            self.cx,
            self.cy,
            self.width,
            self.height,
            supersample,
            shadows,
            show_object,
            num_threads=num_threads,
        )


def sample_scene(
    seed: int,
    num_frames: FrameCount = (30, 100),
    resolution: Resolution = 64,
    fov_deg: Tuple[float, float] = (40.0, 55.0),
    fill: Tuple[float, float] = (0.6, 0.85),
    look_jitter: float = 0.02,
) -> ProceduralScene:
    """Draw a scene from ``seed``.

    The vertical field of view is drawn from ``fov_deg``; the camera distance makes the object's bounding
    sphere span a ``fill`` fraction of the smaller image side. ``look_jitter`` (world units, object ~1 tall)
    is how far the cameras' aim wanders around the object centre.
    """
    width, height = _image_size(resolution)
    rng = np.random.default_rng(int(seed))
    noise = ValueNoise(rng)
    obj = sample_hydrant(rng, noise)
    n = _frame_count(rng, num_frames)
    half_fov = math.radians(rng.uniform(*fov_deg)) / 2
    focal = 0.5 * min(width, height) / math.tan(half_fov)
    angular_radius = math.atan(rng.uniform(*fill) * math.tan(half_fov))
    distance = obj.radius / math.sin(angular_radius)
    env = sample_environment(rng, noise, distance)
    c2w = sample_orbit(rng, n, obj.center, distance, look_jitter=look_jitter)
    c2w = np.round(c2w, 9)  # what transforms.json stores is exactly what was rendered
    return ProceduralScene(int(seed), obj, env, c2w, focal, focal, width / 2.0, height / 2.0, width, height)
