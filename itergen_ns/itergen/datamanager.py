"""IterGenDataManager: input views plus a pool of views sampled from the diffusion model during optimisation.

``next_train(step)`` serves an input view with probability ``p_input`` and a generated view otherwise.
Every ``generate_every`` steps it asks the pose sampler for a clip of G poses, renders the current 3D model
there, and has the generator sample target images conditioned on those renders and the input images.
Async mode renders on the training thread (cheap) and samples in a worker thread (on CUDA, in its own
stream) while training continues on the current pool; sync mode waits, which is simpler to debug.
"""

from __future__ import annotations

import math
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple, Type

import torch
from jaxtyping import Float
from torch import Tensor

from nerfstudio.cameras.cameras import Cameras, CameraType
from nerfstudio.utils.rich_utils import CONSOLE

from itergen_ns.data.datamanager import SparseViewDatamanager, SparseViewDatamanagerConfig
from itergen_ns.data.framing import frame_cameras, frame_image
from itergen_ns.itergen.pose_sampler import PoseSampler, PoseSamplerConfig
from itergen_ns.models.itergen_model import GENERATED_KEY
from itergen_ns.render.warp import warp_nearest_input
from itergen_ns.training.frames import eval_mode, render_rgb_depth


@dataclass
class GeneratedClip:
    """One generated clip: poses (OpenGL c2w), the renders it was conditioned on, and the sampled images."""

    step: int
    poses: Float[Tensor, "G 3 4"]
    renders: Float[Tensor, "G 3 H W"]
    images: Float[Tensor, "G 3 H W"]
    cameras: Cameras


@dataclass
class IterGenDataManagerConfig(SparseViewDatamanagerConfig):
    _target: Type = field(default_factory=lambda: IterGenDataManager)
    p_input: float = 0.75
    """Probability that a training step uses an input view rather than a generated one (0.5 / 0.75 and pool 2 / 4
    were within noise of each other on 4 validation scenes, README "Pool settings")."""
    generate_every: int = 100
    """Steps between generations (sync) / earliest start of the next generation (async)."""
    generate_start: int = 0
    """First step at which a clip is generated."""
    num_generated_frames: Optional[int] = None
    """Frames per clip (G); default: the generator's frame count."""
    pool_clips: int = 2
    """Generated clips kept in the pool (the newest replace the oldest); one-shot keeps all its clips."""
    one_shot: bool = False
    """Ablation (paper): generate the whole ordered set of clips once, from the initial 3D state (as many clips,
    at the same poses and in the same order as the iterative run would visit), then optimise on that fixed set."""
    async_generation: bool = True
    """Sample the next clip in a background worker while training continues."""
    pose_sampler: PoseSamplerConfig = field(default_factory=PoseSamplerConfig)
    generation_seed: Optional[int] = None
    """Seed of the pose sampler, the sampling noise and the input/generated choice; None: the run's seed
    (--machine.seed, with which nerfstudio seeds torch before building the pipeline)."""


class _Ref:
    """Holds a module without registering it, so the model/generator stay out of this module's state_dict."""

    def __init__(self, obj):
        self.obj = obj


class IterGenDataManager(SparseViewDatamanager):
    config: IterGenDataManagerConfig

    def __init__(self, config: IterGenDataManagerConfig, *args, **kwargs):
        if config.input_views is not None and len(config.input_views) == 0:
            raise ValueError("itergen needs at least one input view: --pipeline.datamanager.input-views is empty")
        if not 0.0 <= config.p_input <= 1.0:
            raise ValueError(f"--pipeline.datamanager.p-input must be in [0, 1], got {config.p_input}")
        if config.generate_every < 1:
            raise ValueError(f"--pipeline.datamanager.generate-every must be >= 1, got {config.generate_every}")
        super().__init__(config, *args, **kwargs)
        self._model_ref: Optional[_Ref] = None
        self._generator_ref: Optional[_Ref] = None
        self.pool: List[GeneratedClip] = []
        self.history: List[GeneratedClip] = []
        self.num_generations = 0
        self._pending: Optional[Future] = None
        self._next_due = config.generate_start
        self._executor: Optional[ThreadPoolExecutor] = None
        self._lock = threading.Lock()
        self.seed = torch.initial_seed() if config.generation_seed is None else int(config.generation_seed)
        self._rng = random.Random(self.seed)
        self._frame_order: List[Tuple[int, int]] = []
        self.timings: Dict[str, float] = {"render": 0.0, "generate": 0.0}
        self.pose_sampler: Optional[PoseSampler] = None
        """Built by :meth:`attach` from the input cameras only and the generator's training-clip statistics."""
        self.planned_steps: Optional[int] = None
        """Length of the run (set by the pipeline from the trainer); sizes the one-shot ablation's clip set."""

    # --- wiring -----------------------------------------------------------------------------------------------
    def attach(self, model, generator) -> None:
        """Give the datamanager the 3D model (to render) and the generator (to sample). Called by the pipeline."""
        self._model_ref, self._generator_ref = _Ref(model), _Ref(generator)
        g = self.num_frames
        if g < 2:
            raise ValueError(f"num_generated_frames must be >= 2, got {g}")
        num_inputs = len(self.train_dataset)
        if num_inputs > generator.max_input_views:
            raise ValueError(
                f"{num_inputs} input views, but the diffusion model is conditioned on at most "
                f"{generator.max_input_views}; lower --pipeline.datamanager.num-input-views"
            )
        self._input_images, self._input_poses = self._conditioning_inputs()
        self._input_cameras = frame_cameras(self.train_dataset.cameras, (generator.height, generator.width))
        """The input cameras framed like ``_input_images`` (where the warped-input map's depths are rendered)."""
        self.pose_sampler = self.config.pose_sampler.setup(
            input_c2w=self.train_dataset.cameras.camera_to_worlds,
            seed=self.seed,
            clip_statistics=generator.clip_statistics,
        )

    @property
    def generator(self):
        return None if self._generator_ref is None else self._generator_ref.obj

    @property
    def model(self):
        return None if self._model_ref is None else self._model_ref.obj

    @property
    def num_frames(self) -> Optional[int]:
        """Frames per generated clip; None when no generator is attached (test mode, e.g. `ns-viewer`)."""
        if self.config.num_generated_frames:
            return self.config.num_generated_frames
        return None if self.generator is None else self.generator.num_frames

    def _conditioning_inputs(self) -> Tuple[Float[Tensor, "C 3 H W"], Float[Tensor, "C 4 4"]]:
        """Input images framed to the generator's resolution (the one framing of exporter, eval and training
        clips: centred window of the output's aspect, resized), and their poses as 4x4 c2w."""
        size = (self.generator.height, self.generator.width)
        images = []
        for data in self.cached_train:
            img = data["image"][..., :3].cpu()
            img = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
            images.append(frame_image(img, size).permute(2, 0, 1).clamp(0, 1))
        return torch.stack(images), to_4x4(self.train_dataset.cameras.camera_to_worlds.float())

    def generated_cameras(self, poses: Float[Tensor, "G 3 4"]) -> Cameras:
        """Cameras at ``poses`` with the first input's intrinsics framed to the generator's resolution."""
        first = frame_cameras(self.train_dataset.cameras[0:1], (self.generator.height, self.generator.width))
        n = poses.shape[0]
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

    # --- generation ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def render_clip(self, cameras: Cameras) -> Float[Tensor, "G 3 H W"]:
        """Render the current 3D model at every camera of a clip (eval mode: fixed background, no densify)."""
        return self._render(cameras)[0]

    @torch.no_grad()
    def _render(self, cameras: Cameras) -> Tuple[Float[Tensor, "G 3 H W"], Float[Tensor, "G H W"]]:
        """RGB and surface depth of every camera (an eval-mode render computes both in one pass)."""
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
        input_depth = self._render(self._input_cameras)[1]
        composite, _ = warp_nearest_input(
            renders,
            depth,
            cameras.camera_to_worlds.float().cpu(),
            camera_intrinsics(cameras),
            self._input_images,
            self._input_poses,
            camera_intrinsics(self._input_cameras),
            input_depth,
        )
        return composite

    def _sample(
        self, step: int, poses: Tensor, cameras: Cameras, renders: Tensor, seed: int, warped: Optional[Tensor] = None
    ) -> GeneratedClip:
        start = time.perf_counter()
        target = to_4x4(poses.float())
        intrinsics = None
        if self.generator.needs_intrinsics:
            intrinsics = camera_intrinsics(cameras)
        images = self.generator.sample(
            renders,
            self._input_images,
            self._input_poses,
            target,
            seed=seed,
            target_intrinsics=intrinsics,
            warped_inputs=warped,
        )
        self.timings["generate"] += time.perf_counter() - start
        return GeneratedClip(step=step, poses=poses, renders=renders, images=images.float().clamp(0, 1).cpu(), cameras=cameras)

    def _render_and_sample(self, step: int, poses: Tensor, run_async: bool) -> None:
        """Render the current 3D state at ``poses`` now, and sample there (now, or in the worker)."""
        cameras = self.generated_cameras(poses)
        start = time.perf_counter()
        renders, depth = self._render(cameras)
        warped = self.warp_inputs(cameras, renders, depth) if getattr(self.generator, "needs_depth", False) else None
        self.timings["render"] += time.perf_counter() - start
        seed = self.seed * 100003 + self.num_generations
        self.num_generations += 1
        if run_async:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itergen-generator")
            self._pending = self._executor.submit(self._sample, step, poses, cameras, renders, seed, warped)
        else:
            self._add_to_pool(self._sample(step, poses, cameras, renders, seed, warped))

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

    def _add_to_pool(self, clip: GeneratedClip) -> None:
        with self._lock:
            keep = None if self.config.one_shot else self.config.pool_clips
            self.pool = (self.pool + [clip])[-keep:] if keep else self.pool + [clip]
            self.history.append(clip)
            self._frame_order = []
        CONSOLE.log(f"itergen: clip {len(self.history)} generated from the step-{clip.step} model")

    def refresh(self, step: int) -> None:
        """Collect a finished async clip and start the next generation when one is due."""
        if step < self.config.generate_start or self.generator is None:
            return
        if self._pending is not None and step >= self._next_due:
            # The clip joins at a fixed step (launch + generate_every), waiting if sampling is not done yet:
            # joining whenever the worker happened to finish made same-seed runs differ.
            clip = self._pending.result()  # re-raises a worker error here, on the training thread
            self._pending = None
            self._add_to_pool(clip)
        if self.config.one_shot:
            if self.num_generations == 0:
                self._launch(step)
            return
        if self._pending is None and step >= self._next_due:
            self._launch(step)
            self._next_due = step + self.config.generate_every

    def wait_for_generation(self) -> None:
        """Block until an in-flight async clip has joined the pool (tests, shutdown)."""
        if self._pending is not None:
            clip = self._pending.result()
            self._pending = None
            self._add_to_pool(clip)

    # --- serving ------------------------------------------------------------------------------------------------
    def _next_generated(self) -> Tuple[Cameras, Dict]:
        with self._lock:
            if not self._frame_order:
                self._frame_order = [(c, f) for c, clip in enumerate(self.pool) for f in range(clip.images.shape[0])]
                self._rng.shuffle(self._frame_order)
            c, f = self._frame_order.pop()
            clip = self.pool[c]
        image = (clip.images[f].permute(1, 2, 0) * 255).round().to(torch.uint8).to(self.device)
        camera = clip.cameras[f : f + 1].to(self.device)
        return camera, {"image": image, GENERATED_KEY: True, "image_idx": -1}

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        self.refresh(step)
        if not self.pool or self._rng.random() < self.config.p_input:
            camera, data = super().next_train(step)
            data[GENERATED_KEY] = False
            return camera, data
        return self._next_generated()

    def latest_clip(self) -> Optional[GeneratedClip]:
        with self._lock:
            return self.history[-1] if self.history else None


def camera_intrinsics(cameras: Cameras) -> Float[Tensor, "N 4"]:
    """(fx, fy, cx, cy) in pixels of every camera, on the CPU."""
    return torch.cat([cameras.fx, cameras.fy, cameras.cx, cameras.cy], dim=-1).float().cpu()


def to_4x4(c2w: Float[Tensor, "N 3 4"]) -> Float[Tensor, "N 4 4"]:
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype).expand(c2w.shape[0], 1, 4)
    return torch.cat([c2w, bottom], dim=1)
