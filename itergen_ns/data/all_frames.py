"""Every frame of a scene as the eval harness scores it: the cameras with the training split's normalisation and
framing, and the ground-truth images framed like the renders."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
from PIL import Image

from nerfstudio.data.dataparsers.base_dataparser import DataparserOutputs

from itergen_ns.data.framing import frame_image
from itergen_ns.data.splits import SparseSplitConfig


def all_frames_outputs(datamanager, use_masks: Optional[bool] = None) -> DataparserOutputs:
    """Every frame of the scene, in order, with the training split's normalisation and framing
    (``use_masks`` overrides the parser's choice, e.g. to score with masks a model trained without).

    The project's parsers normalise from the input views, so this asks the run's own parser config (same split)
    for ``split="all"``; re-parsing with every frame as an input would compute a different normalisation.
    """
    parser_config = copy.deepcopy(datamanager.dataparser.config)
    if use_masks is not None:
        parser_config.use_masks = use_masks
    if isinstance(datamanager.dataparser.config, SparseSplitConfig):  # the project's parsers
        return parser_config.setup().get_dataparser_outputs(split="all")
    parser_config.num_input_views = 0  # another parser: its normalisation does not depend on the split
    parser_config.input_views = None
    return parser_config.setup().get_dataparser_outputs(split="train")


def load_rgb(path: Path, size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """uint8 RGB of ``path``, framed to (H, W) by ``itergen_ns.data.framing`` when given and different (never
    squashed); the error names the file."""
    try:
        with Image.open(path) as im:
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    except OSError as err:
        raise ValueError(f"{path}: unreadable image ({err})") from err
    if size is not None and rgb.shape[:2] != tuple(size):
        rgb = frame_image(rgb, (size[0], size[1]))
    return rgb


def load_frames(paths: List[Path], size: Optional[Tuple[int, int]] = None) -> List[np.ndarray]:
    return [load_rgb(p, size) for p in paths]
