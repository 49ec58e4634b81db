"""Scoring of one ``itergen eval`` run: which rendered frames are scored (those that were not input views) and
their metrics against the ground truth, whole-image and, where the scene has masks, over the object."""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from itergen_ns.eval.metrics import image_metrics, masked_psnr, silhouette_iou


def score_run(
    renders: np.ndarray,
    targets: np.ndarray,
    inputs: Sequence[int],
    masks: Optional[np.ndarray],
    silhouettes: Optional[np.ndarray],
    use_masks: bool,
) -> Tuple[List[int], List[Dict[str, float]]]:
    """The evaluated frames (the non-inputs; every frame if all were inputs) and each one's metrics: the image
    metrics (object only with ``use_masks``), plus ``object_scores`` wherever the scene has masks."""
    eval_idx = [i for i in range(len(renders)) if i not in set(inputs)] or list(range(len(renders)))
    per_frame = score_frames(renders, targets, eval_idx, masks if use_masks else None)
    if masks is not None:
        for metrics, extra in zip(per_frame, object_scores(renders, targets, eval_idx, masks, silhouettes)):
            metrics.update(extra)
    return eval_idx, per_frame


def score_frames(
    renders: np.ndarray, targets: np.ndarray, eval_indices: Sequence[int], masks: Optional[np.ndarray] = None
) -> List[Dict[str, float]]:
    """Metrics of each evaluated frame; with masks, pixels outside the object are set to white in both images."""
    out = []
    for i in eval_indices:
        pred = torch.from_numpy(renders[i]).float() / 255.0
        gt = torch.from_numpy(targets[i]).float() / 255.0
        if masks is not None:
            m = torch.from_numpy(masks[i] > 127).float()[..., None]
            pred, gt = pred * m + (1 - m), gt * m + (1 - m)
        out.append(image_metrics(pred, gt))
    return out


def object_scores(
    renders: np.ndarray,
    targets: np.ndarray,
    eval_indices: Sequence[int],
    masks: np.ndarray,
    silhouettes: Optional[np.ndarray] = None,
) -> List[Dict[str, float]]:
    """Per evaluated frame: PSNR over the object's pixels (``masked_psnr``) and, with the rendered object
    accumulation, the silhouette IoU against the mask (``iou``)."""
    out = []
    for i in eval_indices:
        mask = torch.from_numpy(masks[i] > 127)
        pred = torch.from_numpy(renders[i]).float() / 255.0
        gt = torch.from_numpy(targets[i]).float() / 255.0
        scores = {"masked_psnr": masked_psnr(pred, gt, mask)}
        if silhouettes is not None:
            scores["iou"] = silhouette_iou(torch.from_numpy(silhouettes[i]), mask)
        out.append(scores)
    return out
