"""P_lambda: where to generate next (docs/architecture.md, "Pose sampling": the paper's "uncertainty-guided ordering").

Generated poses are rigid motions of a known camera along the capture orbit: rotate about the orbit's up
axis through the object centre (azimuth), tilt about the horizontal axis (elevation), and dolly along the
view direction (zoom). With C inputs there are C chains: clip n continues chain n mod C, which starts exactly
at input n mod C and then where its previous clip ended, moving towards the nearest azimuths not yet covered
by inputs or earlier clips — the model generates where it is least uncertain first, growing outward from
what it has seen. The per-frame angular step and zoom follow the generator's training clips
(:class:`~itergen_ns.diffusion.sampling.ClipStatistics`), so generated trajectories look like the ones the
model learned from.

Leak-free by construction: the sampler is built from the input cameras only (and its own earlier clips);
it never sees held-out cameras.

The orbit is level. With >= 3 inputs its up axis is the normal of the plane through the input centres. With
1-2 inputs the roll is assumed zero and the vertical is recovered from each input camera's up and view
vectors with an elevation prior (default: the training clips' mean elevation): a camera that looks down at
elevation e has world up = cos(e) * cam_up - sin(e) * forward. (Using the camera's own up as the orbit axis
tilts the orbit by e: at the far side the camera would look up at the object from below its equator.)

Ablation: ``order="random"`` (clips start at random orbit positions, random direction).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Deque, List, Literal, Optional, Tuple, Type

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.configs.base_config import InstantiateConfig

from itergen_ns.data.camera_utils import nearest_point_to_axes, orbit_plane_normal

FALLBACK_DEGREES_PER_FRAME = 4.0
"""Angular step when the generator carries no training-clip statistics (an untrained smoke-test model)."""
FALLBACK_ELEVATION_DEGREES = 20.0
"""Elevation prior for 1-2 inputs without statistics (the middle of the procedural captures' 8-40 degrees)."""


def axis_angle_matrix(axis: Float[Tensor, "3"], angle: float) -> Float[Tensor, "3 3"]:
    """Rotation by ``angle`` radians about unit ``axis`` (Rodrigues)."""
    axis = axis / axis.norm().clamp_min(1e-12)
    x, y, z = axis.tolist()
    k = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=axis.dtype)
    return torch.eye(3, dtype=axis.dtype) + math.sin(angle) * k + (1 - math.cos(angle)) * (k @ k)


@dataclass
class Orbit:
    """Capture orbit estimated from input cameras: centre, unit up axis, reference azimuth direction."""

    centre: Float[Tensor, "3"]
    up: Float[Tensor, "3"]
    ref: Float[Tensor, "3"]

    @classmethod
    def from_cameras(
        cls, c2w: Float[Tensor, "N 3 4"], elevation_prior_degrees: float = FALLBACK_ELEVATION_DEGREES
    ) -> "Orbit":
        """The orbit of an inward capture seen from ``c2w`` (the input cameras only)."""
        c2w = c2w.double()
        if c2w.shape[0] >= 2:
            centre = nearest_point_to_axes(c2w)
        else:  # one camera: the point on its axis nearest the world origin (parsers centre the object)
            origin, forward = c2w[0, :, 3], -c2w[0, :, 2]
            centre = origin + torch.clamp(torch.dot(-origin, forward), min=1e-3) * forward
        positions = c2w[:, :, 3] - centre
        cam_up = c2w[:, :, 1].mean(0)
        up = orbit_plane_normal(positions, cam_up) if c2w.shape[0] >= 3 else None
        if up is None:
            up = level_up(c2w, elevation_prior_degrees)
        radial = positions[0] - torch.dot(positions[0], up) * up
        if radial.norm() < 1e-6:
            radial = torch.linalg.cross(up, torch.tensor([1.0, 0.0, 0.0], dtype=up.dtype))
        return cls(centre=centre, up=up, ref=radial / radial.norm())

    def azimuth(self, c2w: Float[Tensor, "3 4"]) -> float:
        """Azimuth (degrees in [0, 360)) of a camera centre about the up axis."""
        p = c2w[:, 3].double() - self.centre
        p = p - torch.dot(p, self.up) * self.up
        side = torch.linalg.cross(self.up, self.ref)
        return math.degrees(math.atan2(torch.dot(p, side).item(), torch.dot(p, self.ref).item())) % 360.0

    def elevation(self, c2w: Float[Tensor, "3 4"]) -> float:
        p = c2w[:, 3].double() - self.centre
        return math.degrees(math.asin(float(torch.dot(p, self.up) / p.norm().clamp_min(1e-12))))

    def move(
        self, c2w: Float[Tensor, "3 4"], d_azimuth: float, d_elevation: float, zoom: float
    ) -> Float[Tensor, "3 4"]:
        """``c2w`` rotated by d_azimuth about the up axis, tilted by d_elevation and dollied by factor ``zoom``
        (distance to the centre scales by it); angles in degrees."""
        c2w = c2w.double()
        rot_az = axis_angle_matrix(self.up, math.radians(d_azimuth))
        pos = self.centre + rot_az @ (c2w[:, 3] - self.centre)
        rot = rot_az @ c2w[:, :3]
        radial = pos - self.centre
        tangent = torch.linalg.cross(self.up, radial)
        if tangent.norm() > 1e-9 and d_elevation != 0.0:
            rot_el = axis_angle_matrix(tangent, -math.radians(d_elevation))
            pos = self.centre + rot_el @ (pos - self.centre)
            rot = rot_el @ rot
        pos = self.centre + zoom * (pos - self.centre)
        return torch.cat([rot, pos[:, None]], dim=1)


def level_up(c2w: Float[Tensor, "N 3 4"], elevation_degrees: float) -> Float[Tensor, "3"]:
    """World up from cameras with zero roll looking down at ``elevation_degrees``: each camera gives
    cos(e) * up_cam - sin(e) * forward; with two cameras at a common elevation the up is also orthogonal to
    their baseline, so that component is removed."""
    e = math.radians(elevation_degrees)
    forward = -c2w[:, :, 2]
    est = (math.cos(e) * c2w[:, :, 1] - math.sin(e) * forward).mean(0)
    if c2w.shape[0] == 2:
        base = c2w[1, :, 3] - c2w[0, :, 3]
        if base.norm() > 1e-9:
            base = base / base.norm()
            est = est - torch.dot(est, base) * base
    return est / est.norm()


@dataclass
class PoseSamplerConfig(InstantiateConfig):
    """Pose sampler P_lambda."""

    _target: Type = field(default_factory=lambda: PoseSampler)
    order: Literal["uncertainty", "random"] = "uncertainty"
    """uncertainty: outward from inputs and earlier clips; random: clips at random orbit positions (ablation)."""
    degrees_per_frame: Optional[float] = None
    """Angular step between consecutive generated frames; None: the generator's training clips' mean step
    (ClipStatistics in its model directory; FALLBACK_DEGREES_PER_FRAME for a model without them)."""
    elevation_prior_degrees: Optional[float] = None
    """With 1-2 inputs: the inputs' assumed elevation, which fixes the vertical; None: the training clips' mean
    elevation (FALLBACK_ELEVATION_DEGREES without statistics). Unused with >= 3 inputs."""
    input_coverage_degrees: float = 15.0
    """Half-width of the azimuth arc an input view counts as covering."""
    elevation_step_degrees: float = 1.0
    """Std of the per-frame elevation random walk."""
    elevation_margin_degrees: float = 15.0
    """Elevations stay within the inputs' range widened by this margin."""
    zoom_log_std: Optional[float] = None
    """Each clip dollies by exp(N(0, s)) over its length (clipped at 2 s); None: the training clips' zoom spread
    (0 without statistics)."""
    zoom_probability: float = 0.0
    """Chance of an extra, deliberate zoom in or out within zoom_range over a clip (0: only the training-like
    dolly above)."""
    zoom_range: Tuple[float, float] = (0.8, 1.2)
    max_history: int = 64
    """Clips remembered in ``clips`` (for the viewer and tests); older ones are dropped."""


class PoseSampler:
    """Stateful sampler of G-frame camera clips (OpenGL c2w [G, 3, 4]).

    ``seed`` comes from the run (itergen: the datamanager's generation seed, which follows --machine.seed);
    ``clip_statistics`` from the generator's model directory.
    """

    def __init__(
        self, config: PoseSamplerConfig, input_c2w: Float[Tensor, "N 3 4"], seed: int = 0, clip_statistics=None
    ):
        if input_c2w.shape[0] == 0:
            raise ValueError("PoseSampler needs at least one input camera")
        self.config = config
        stats = clip_statistics
        self.degrees_per_frame = _first(
            config.degrees_per_frame, stats and stats.degrees_per_frame, FALLBACK_DEGREES_PER_FRAME
        )
        self.elevation_prior = _first(
            config.elevation_prior_degrees, stats and stats.mean_elevation_degrees, FALLBACK_ELEVATION_DEGREES
        )
        self.zoom_log_std = _first(config.zoom_log_std, stats and stats.zoom_log_std, 0.0)
        self.inputs = input_c2w.detach().double().cpu()
        self.orbit = Orbit.from_cameras(self.inputs, self.elevation_prior)
        self.rng = np.random.default_rng(seed)
        elevations = [self.orbit.elevation(c) for c in self.inputs]
        margin = config.elevation_margin_degrees
        self.elevation_bounds = (max(-85.0, min(elevations) - margin), min(85.0, max(elevations) + margin))
        self.covered = np.zeros(360, dtype=bool)
        self.reset_coverage()
        self.chain_ends: List[Optional[Tensor]] = [None] * len(self.inputs)
        """Where each input's chain of clips has got to (None: not started)."""
        self.clips: Deque[Tensor] = deque(maxlen=config.max_history)
        self.num_clips = 0

    def reset_coverage(self) -> None:
        """Only the inputs' azimuths (each +- input_coverage_degrees) count as covered: a new round outward."""
        self.covered[:] = False
        for c in self.inputs:
            self.cover(self.orbit.azimuth(c), self.config.input_coverage_degrees)

    def cover(self, azimuth: float, half_width: float) -> None:
        """Mark the orbit azimuths within ``half_width`` degrees of ``azimuth`` as covered."""
        lo = int(math.floor(azimuth - half_width))
        hi = int(math.ceil(azimuth + half_width))
        self.covered[np.arange(lo, hi + 1) % 360] = True

    def _direction_to_uncovered(self, azimuth: float) -> int:
        """+1 or -1: the way round the orbit with the nearest uncovered azimuth (0 if all covered)."""
        start = int(round(azimuth)) % 360
        for dist in range(1, 181):
            plus, minus = not self.covered[(start + dist) % 360], not self.covered[(start - dist) % 360]
            if plus or minus:
                if plus and minus:
                    return 1 if self.rng.random() < 0.5 else -1
                return 1 if plus else -1
        return 0

    def _trajectory(self, anchor: Tensor, num_frames: int, direction: int) -> Tensor:
        """Clip from ``anchor`` (frame 0 == anchor) moving ``direction`` along the orbit."""
        cfg = self.config
        zoom_to = 1.0
        if self.zoom_log_std > 0:
            zoom_to = math.exp(float(np.clip(self.rng.normal(0.0, 1.0), -2.0, 2.0)) * self.zoom_log_std)
        if self.rng.random() < cfg.zoom_probability:
            zoom_to *= float(self.rng.uniform(*cfg.zoom_range))
        lo, hi = self.elevation_bounds
        elevation = self.orbit.elevation(anchor)
        frames, d_el_total = [anchor.double()], 0.0
        for j in range(1, num_frames):
            step = float(self.rng.normal(0.0, cfg.elevation_step_degrees))
            step = min(max(step, lo - elevation), hi - elevation)
            elevation += step
            d_el_total += step
            zoom = 1.0 + (zoom_to - 1.0) * j / max(1, num_frames - 1)
            frames.append(self.orbit.move(anchor, direction * self.degrees_per_frame * j, d_el_total, zoom))
        return torch.stack(frames)

    def next_clip(self, num_frames: int) -> Float[Tensor, "G 3 4"]:
        """The next clip of ``num_frames`` poses."""
        if self.config.order == "random":
            anchor = self.inputs[int(self.rng.integers(len(self.inputs)))]
            anchor = self.orbit.move(anchor, float(self.rng.uniform(0, 360)), 0.0, 1.0)
            clip = self._trajectory(anchor, num_frames, 1 if self.rng.random() < 0.5 else -1)
        else:
            chain = self.num_clips % len(self.inputs)
            chain_end = self.chain_ends[chain]
            anchor = self.inputs[chain] if chain_end is None else chain_end
            direction = self._direction_to_uncovered(self.orbit.azimuth(anchor))
            if direction == 0:  # orbit fully covered: a new round outward from the inputs, with fresher renders
                self.reset_coverage()
                direction = self._direction_to_uncovered(self.orbit.azimuth(anchor)) or 1
            clip = self._trajectory(anchor, num_frames, direction)
            for c in clip:
                self.cover(self.orbit.azimuth(c), self.degrees_per_frame / 2 + 0.5)
            self.chain_ends[chain] = clip[-1]
        self.num_clips += 1
        self.clips.append(clip)
        return clip.float()

    def plan(self, num_clips: int, num_frames: int) -> List[Float[Tensor, "G 3 4"]]:
        """The next ``num_clips`` clips at once (one-shot ablation: the poses and order an iterative run visits)."""
        return [self.next_clip(num_frames) for _ in range(num_clips)]


def _first(*values):
    """The first value that is not None (an explicit setting, then a measured statistic, then a fallback)."""
    return next(float(v) for v in values if v is not None)
