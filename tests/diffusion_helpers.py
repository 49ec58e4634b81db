"""Shared pieces of the diffusion tests (imported as a top-level module: tests/ has no __init__.py)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The tiny model's ops are too small for intra-op threads to pay off (5x faster on 2 busy cores).

    Autouse and module-scoped: importing it into a test module applies it to that module's tests.
    """
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(prev)
