"""LPIPS that never downloads: built lazily from backbone weights already in the local torch cache.

The `lpips` package ships its linear heads, but its AlexNet/VGG backbone comes from torchvision's
download cache. Offline machines often lack it; then LPIPS is reported unavailable once and callers
fall back (SSIM for losses, no LPIPS column for metrics) instead of crashing.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Literal, Optional

import torch
from torch import nn

from nerfstudio.utils.rich_utils import CONSOLE

LPIPSNet = Literal["alex", "vgg"]
_BACKBONE_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
_cache: dict = {}
_warned: set = set()
_lock = threading.Lock()


def backbone_weights_path(net: LPIPSNet = "alex") -> Path:
    """Where torchvision looks for the LPIPS backbone (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / _BACKBONE_FILES[net]


def lpips_unavailable_reason(net: LPIPSNet = "alex") -> Optional[str]:
    """None when LPIPS can be built offline, else a sentence saying what is missing and how to supply it."""
    if os.environ.get("ITERGEN_DISABLE_LPIPS", "0") == "1":
        return "LPIPS disabled by ITERGEN_DISABLE_LPIPS=1"
    path = backbone_weights_path(net)
    if not path.exists():
        return (
            f"LPIPS unavailable: backbone weights {path} not found. On a connected machine run "
            f"`python -c \"import lpips; lpips.LPIPS(net='{net}')\"` and copy {path.name} into {path.parent} "
            "(or set TORCH_HOME)."
        )
    return None


def get_lpips(net: LPIPSNet = "alex", device: torch.device | str = "cpu") -> Optional[nn.Module]:
    """A frozen ``lpips.LPIPS`` on ``device`` (inputs in [-1, 1]), or None (warned once) when weights are missing."""
    key = (net, str(device))
    with _lock:
        if key in _cache:
            return _cache[key]
        reason = lpips_unavailable_reason(net)
        if reason is not None:
            if net not in _warned:
                CONSOLE.print(f"[bold yellow]{reason} Falling back to SSIM for losses; LPIPS metrics are omitted.")
                _warned.add(net)
            _cache[key] = None
            return None
        import lpips  # deferred: importing it pulls torchvision model definitions

        model = lpips.LPIPS(net=net, verbose=False).to(device).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        _cache[key] = model
        return model


def reset_lpips_cache() -> None:
    """Forget loaded/missing LPIPS state (tests change TORCH_HOME)."""
    with _lock:
        _cache.clear()
        _warned.clear()
