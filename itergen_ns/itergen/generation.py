"""ClipGeneration: the one line itergen changes in the reconstruction loop, x^g ~ P_theta(x | render(z^t, c^g), x_c).

Every ``generate_every`` steps the pose sampler proposes a clip of G cameras c^g; the current 3D model z^t is
rendered there (RGB and depth, eval mode), the generator samples target images conditioned on those renders and
the input views, and the clip joins a :class:`GeneratedViewPool` that the datamanager serves training views from.
Async mode renders on the training thread (cheap) and samples in a worker thread (on CUDA, in its own stream)
while training continues on the current pool; a launched clip joins at exactly ``launch + generate_every`` (waiting
if sampling is slower), so same-seed runs are identical. Sync mode samples at once, which is simpler to debug.

:class:`~itergen_ns.itergen.pipeline.IterGenPipeline` builds this and calls :meth:`ClipGeneration.refresh` before
each training step.
"""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import torch
from jaxtyping import Float, UInt8
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.camera_utils import camera_intrinsics, to_homogeneous
from itergen_ns.data.framing import frame_cameras
from itergen_ns.itergen.pose_sampler import PoseSampler, PoseSamplerConfig
from itergen_ns.models.rendering import eval_mode, render_rgb_depth
from itergen_ns.render.warp import warp_nearest_input


@dataclass
class GenerationConfig:
    """When and where itergen samples generated views (``--pipeline.generation.*``)."""

    generate_every: int = 100
    """Steps between generations (sync) / earliest start of the next generation (async)."""
    generate_start: int = 0
    """First step at which a clip is generated."""
    num_generated_frames: Optional[int] = None
    """Frames per clip (G); default: the generator's frame count."""
    pool_clips: int = 2
    """Generated clips kept in the pool (the newest replace the oldest); one-shot keeps all its clips. (Pool 2 / 4
    and p_input 0.5 / 0.75 were within noise of each other on 4 validation scenes, README "Pool settings".)"""
    one_shot: bool = False
    """Ablation (paper): generate the whole ordered set of clips once, from the initial 3D state (as many clips,
    at the same poses and in the same order as the iterative run would visit), then optimise on that fixed set."""
    async_generation: bool = True
    """Sample the next clip in a background worker while training continues."""
    pose_sampler: PoseSamplerConfig = field(default_factory=PoseSamplerConfig)
    generation_seed: Optional[int] = None
    """Seed of the pose sampler, the sampling noise and the input/generated choice; None: the run's seed
    (--machine.seed, with which nerfstudio seeds torch before building the pipeline)."""

    def resolved_seed(self) -> int:
        return torch.initial_seed() if self.generation_seed is None else int(self.generation_seed)


@dataclass
class GeneratedClip:
    """One generated clip: poses (OpenGL c2w), the renders it was conditioned on, and the sampled images."""

    step: int
    poses: Float[Tensor, "G 3 4"]
    renders: Float[Tensor, "G 3 H W"]
    images: Float[Tensor, "G 3 H W"]
    cameras: Cameras


@dataclass
class GeneratedView:
    """One frame of a pooled clip, as the datamanager serves it."""

    camera: Cameras
    """A single camera (batch shape [1]) on the CPU."""
    image: UInt8[Tensor, "H W 3"]


@dataclass
class InputViews:
    """The input views as the generator is conditioned on them: framed to its resolution (centred window of its
    aspect, resized: the one framing of exporter, eval and training clips)."""

    images: Float[Tensor, "C 3 H W"]
    poses: Float[Tensor, "C 4 4"]
    cameras: Cameras
    """The input cameras framed like ``images`` (where the warped-input map's depths are rendered)."""


class GeneratedViewPool:
    """The newest ``capacity`` clips (every clip when None); frames are served shuffled without replacement, one
    pass over the pool before any frame repeats, the order drawn from the caller's RNG. Thread-safe."""

    def __init__(self, capacity: Optional[int]):
        self.capacity = capacity
        self.clips: List[GeneratedClip] = []
        self._order: List[Tuple[int, int]] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.clips)

    def add(self, clip: GeneratedClip) -> None:
        with self._lock:
            self.clips = (self.clips + [clip])[-self.capacity :] if self.capacity else self.clips + [clip]
            self._order = []

    def reshuffle(self) -> None:
        """Start a new pass over the pool at the next draw."""
        with self._lock:
            self._order = []

    def draw(self, rng: random.Random) -> GeneratedView:
        with self._lock:
            if not self._order:
                self._order = [(c, f) for c, clip in enumerate(self.clips) for f in range(clip.images.shape[0])]
                rng.shuffle(self._order)
            c, f = self._order.pop()
            clip = self.clips[c]
        image = (clip.images[f].permute(1, 2, 0) * 255).round().to(torch.uint8)
        return GeneratedView(camera=clip.cameras[f : f + 1], image=image)


class ClipGeneration:
    """Render -> sample -> pool, on the schedule of :class:`GenerationConfig`."""

    def __init__(self, config: GenerationConfig, model, generator, inputs: InputViews, input_cameras: Cameras):
        """``input_cameras``: the input views' cameras as parsed (the pose sampler grows clips outward from them,
        and generated cameras take the first one's intrinsics)."""
        if config.generate_every < 1:
            raise ValueError(f"--pipeline.generation.generate-every must be >= 1, got {config.generate_every}")
        self.config = config
        self.model = model
        self.generator = generator
        self.inputs = inputs
        self.num_frames = config.num_generated_frames or generator.num_frames
        if self.num_frames < 2:
            raise ValueError(f"num_generated_frames must be >= 2, got {self.num_frames}")
        self.seed = config.resolved_seed()
        self.pool = GeneratedViewPool(None if config.one_shot else config.pool_clips)
        self.history: List[GeneratedClip] = []
        self.num_generations = 0
        self.timings: Dict[str, float] = {"render": 0.0, "generate": 0.0}
        self.planned_steps: Optional[int] = None
        """Length of the run (set by the pipeline from the trainer); sizes the one-shot ablation's clip set."""
        self.pose_sampler: PoseSampler = config.pose_sampler.setup(
            input_c2w=input_cameras.camera_to_worlds, seed=self.seed, clip_statistics=generator.clip_statistics
        )
        self._first_camera = frame_cameras(input_cameras[0:1], (generator.height, generator.width))
        self._pending: Optional[Future] = None
        self._next_due = config.generate_start
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()

    # --- cameras and renders ------------------------------------------------------------------------------------
    def generated_cameras(self, poses: Float[Tensor, "G 3 4"]) -> Cameras:
        """Cameras at ``poses`` with the first input's intrinsics framed to the generator's resolution."""
        first, n = self._first_camera, poses.shape[0]
        return Cameras(
            camera_to_worlds=poses.float(),
            fx=first.fx.expand(n, 1),
            fy=first.fy.expand(n, 1),
            cx=first.cx.expand(n, 1),
            cy=first.cy.expand(n, 1),
            width=first.width.expand(n, 1),
            height=first.height.expand(n, 1),
            camera_type=CameraType.PERSPECTIVE,
        )

    @torch.no_grad()
    def render(self, cameras: Cameras) -> Tuple[Float[Tensor, "G 3 H W"], Float[Tensor, "G H W"]]:
        """RGB and surface depth of the current 3D model at every camera (eval mode: fixed background, no
        densification; one pass computes both)."""
        rgbs, depths = [], []
        with eval_mode(self.model):
            for i in range(cameras.shape[0]):
                rgb, depth = render_rgb_depth(self.model, cameras, i)
                rgbs.append(rgb.permute(2, 0, 1).cpu())
                depths.append(depth.cpu())
        return torch.stack(rgbs), torch.stack(depths)

    @torch.no_grad()
    def warp_inputs(
        self, cameras: Cameras, renders: Float[Tensor, "G 3 H W"], depth: Float[Tensor, "G H W"]
    ) -> Float[Tensor, "G 3 H W"]:
        """The clip's renders with the nearest input view warped in through the current model's depth (for
        generators with the "warped_input" map); the input views' depths (occlusion test) are rendered here."""
        input_depth = self.render(self.inputs.cameras)[1]
        composite, _ = warp_nearest_input(
            renders,
            depth,
            cameras.camera_to_worlds.float().cpu(),
            camera_intrinsics(cameras),
            self.inputs.images,
            self.inputs.poses,
            camera_intrinsics(self.inputs.cameras),
            input_depth,
        )
        return composite

    # --- sampling -----------------------------------------------------------------------------------------------
    def _sample(
        self, step: int, poses: Tensor, cameras: Cameras, renders: Tensor, seed: int, warped: Optional[Tensor] = None
    ) -> GeneratedClip:
        start = time.perf_counter()
        intrinsics = camera_intrinsics(cameras) if self.generator.needs_intrinsics else None
        images = self.generator.sample(
            renders,
            self.inputs.images,
            self.inputs.poses,
            to_homogeneous(poses.float()),
            seed=seed,
            target_intrinsics=intrinsics,
            warped_inputs=warped,
        )
        self.timings["generate"] += time.perf_counter() - start
        return GeneratedClip(
            step=step, poses=poses, renders=renders, images=images.float().clamp(0, 1).cpu(), cameras=cameras
        )

    def _render_and_sample(self, step: int, poses: Tensor, run_async: bool) -> None:
        """Render the current 3D state at ``poses`` now, and sample there (now, or in the worker)."""
        cameras = self.generated_cameras(poses)
        start = time.perf_counter()
        renders, depth = self.render(cameras)
        warped = self.warp_inputs(cameras, renders, depth) if self.generator.needs_depth else None
        self.timings["render"] += time.perf_counter() - start
        seed = self.seed * 100003 + self.num_generations
        self.num_generations += 1
        if run_async:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itergen-generator")
            self._pending = self._executor.submit(self._sample, step, poses, cameras, renders, seed, warped)
        else:
            self._add(self._sample(step, poses, cameras, renders, seed, warped))

    def one_shot_num_clips(self) -> int:
        """Clips an iterative run of ``planned_steps`` steps would generate (one per ``generate_every`` steps)."""
        steps = self.planned_steps if self.planned_steps is not None else self.config.generate_every
        return max(1, math.ceil((steps - self.config.generate_start) / self.config.generate_every))

    def _launch(self, step: int) -> None:
        """Choose poses and generate there; one-shot generates the whole planned set from the current state."""
        if self.config.one_shot:
            for poses in self.pose_sampler.plan(self.one_shot_num_clips(), self.num_frames):
                self._render_and_sample(step, poses, run_async=False)
            return
        self._render_and_sample(step, self.pose_sampler.next_clip(self.num_frames), self.config.async_generation)

    def _add(self, clip: GeneratedClip) -> None:
        self.pool.add(clip)
        with self._lock:
            self.history.append(clip)
        CONSOLE.log(f"itergen: clip {len(self.history)} generated from the step-{clip.step} model")

    # --- schedule -----------------------------------------------------------------------------------------------
    def refresh(self, step: int) -> None:
        """Collect a finished async clip and start the next generation when one is due."""
        if step < self.config.generate_start:
            return
        if self._pending is not None and step >= self._next_due:
            # The clip joins at a fixed step (launch + generate_every), waiting if sampling is not done yet:
            # joining whenever the worker happened to finish made same-seed runs differ.
            clip = self._pending.result()  # re-raises a worker error here, on the training thread
            self._pending = None
            self._add(clip)
        if self.config.one_shot:
            if self.num_generations == 0:
                self._launch(step)
            return
        if self._pending is None and step >= self._next_due:
            self._launch(step)
            self._next_due = step + self.config.generate_every

    def wait(self) -> None:
        """Block until an in-flight async clip has joined the pool (tests, shutdown)."""
        if self._pending is not None:
            clip = self._pending.result()
            self._pending = None
            self._add(clip)

    def latest_clip(self) -> Optional[GeneratedClip]:
        with self._lock:
            return self.history[-1] if self.history else None
