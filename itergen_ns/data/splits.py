"""Deterministic choice of the sparse input views (shared by every dataparser of the project)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np


@dataclass
class SparseSplitConfig:
    """Fields every itergen dataparser carries; the datamanager copies its own values in here.

    ``num_input_views`` views (or the explicit ``input_views`` frame indices) form the train split,
    every other frame is evaluation.
    """

    num_input_views: int = 3
    """How many input views to train from (ignored when input_views is given). 0 or less: all frames."""
    input_view_seed: int = 0
    """Seed of the deterministic input-view choice."""
    input_views: Optional[Tuple[int, ...]] = None
    """Explicit frame indices (positions in the sorted frame list) to use as input views."""


def select_input_views(
    num_frames: int, num_input_views: int, seed: int = 0, explicit: Optional[Sequence[int]] = None
) -> Tuple[List[int], List[int]]:
    """Return (train_indices, eval_indices) for a sequence of ``num_frames`` frames.

    With ``num_input_views <= 0`` or >= num_frames every frame is a train frame *and* an eval frame
    (the dense reference setting). Otherwise the eval split is exactly the frames not chosen.
    The choice depends only on (num_frames, num_input_views, seed), so all methods of an evaluation see
    the same inputs.
    """
    if num_frames <= 0:
        raise ValueError("select_input_views: the sequence has no frames")
    all_idx = list(range(num_frames))
    if explicit is not None and len(explicit) > 0:
        chosen = sorted({int(i) for i in explicit})
        bad = [i for i in chosen if i < 0 or i >= num_frames]
        if bad:
            raise ValueError(f"input_views: frame indices {bad} are outside [0, {num_frames - 1}]")
    elif num_input_views <= 0 or num_input_views >= num_frames:
        return all_idx, all_idx
    else:
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for i in rng.choice(num_frames, size=num_input_views, replace=False))
    chosen_set = set(chosen)
    rest = [i for i in all_idx if i not in chosen_set]
    if not rest:  # every frame is an input: evaluate on the inputs themselves
        rest = chosen
    return chosen, rest
