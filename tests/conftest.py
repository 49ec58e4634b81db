"""Shared test fixtures. Modules opt into one torch thread with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from itergen_ns.data.scenes import make_scenes

REPO_ROOT = Path(__file__).resolve().parents[1]
"""The checkout (tests live in sub-folders mirroring the package, so no test computes this itself)."""
SHARED = REPO_ROOT.parent / "shared"
"""Small real captures and weights beside the checkout (CI has it; tests that need it skip without it)."""


@pytest.fixture(scope="module")
def one_torch_thread():
    """Single-threaded torch for a module, restored afterwards.

    Small ops gain nothing from intra-op threads, spinning OpenMP workers make them erratic on a busy 2-core
    machine, and a fixed thread count keeps float reductions (hence exported bytes) reproducible.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)


def tiny_scenes(root: Path, num_scenes: int, seed: int, num_frames: int, size: int, **kwargs) -> Path:
    """Fast procedural scenes for tests (no supersampling); returns ``root``."""
    make_scenes(root, num_scenes=num_scenes, seed=seed, num_frames=num_frames, resolution=size, supersample=1, **kwargs)
    return root
