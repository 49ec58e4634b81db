"""Deterministic choice of the sparse input views (shared by every dataparser of the project)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Literal, Optional, Sequence, Tuple

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
    input_view_rule: Literal["random", "evenly_spaced"] = "random"
    """How num_input_views are chosen: "random" (a seeded random subset) or "evenly_spaced" along the capture
    (frame list order): positions floor((k + 1/2) N / n) + seed, mod N (one view: the middle frame)."""


InputViewRule = Literal["random", "evenly_spaced"]


def evenly_spaced_views(num_frames: int, num_input_views: int, offset: int = 0) -> List[int]:
    """Positions ``floor((k + 1/2) * N / n) + offset`` (mod N), k = 0..n-1: the centres of n equal runs of the
    frame list, e.g. 3 of 20 -> [3, 10, 16], 1 of 16 -> [8]."""
    n, total = int(num_input_views), int(num_frames)
    return sorted({(int((2 * k + 1) * total // (2 * n)) + int(offset)) % total for k in range(n)})


def select_input_views(
    num_frames: int,
    num_input_views: int,
    seed: int = 0,
    explicit: Optional[Sequence[int]] = None,
    rule: InputViewRule = "random",
) -> Tuple[List[int], List[int]]:
    """Return (train_indices, eval_indices) for a sequence of ``num_frames`` frames.

    With ``num_input_views <= 0`` or >= num_frames every frame is a train frame *and* an eval frame
    (the dense reference setting). Otherwise the eval split is exactly the frames not chosen.
    The choice depends only on (num_frames, num_input_views, seed, rule), so all methods of an evaluation see
    the same inputs: ``rule="random"`` a seeded random subset, ``"evenly_spaced"`` ``evenly_spaced_views`` with
    the seed as offset.
    """
    if rule not in ("random", "evenly_spaced"):
        raise ValueError(f"input_view_rule={rule!r}; expected 'random' or 'evenly_spaced'")
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
    elif rule == "evenly_spaced":
        chosen = evenly_spaced_views(num_frames, num_input_views, seed)
    else:
        rng = np.random.default_rng(seed)
        chosen = sorted(int(i) for i in rng.choice(num_frames, size=num_input_views, replace=False))
    chosen_set = set(chosen)
    rest = [i for i in all_idx if i not in chosen_set]
    if not rest:  # every frame is an input: evaluate on the inputs themselves
        rest = chosen
    return chosen, rest
