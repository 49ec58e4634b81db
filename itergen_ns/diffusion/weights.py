"""Loading pretrained components offline, with an error that says which weights are missing and how to get them.

Nothing here touches the network unless ``allow_download`` is set: ``from_pretrained`` runs with
``local_files_only=True``, so a hub id resolves only from the local Hugging Face cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Optional

from itergen_ns.diffusion.configs import DINOV2_HUB_ID, SVD_HUB_ID, ComponentSource


class MissingWeightsError(FileNotFoundError):
    """Pretrained weights could not be found locally (offline) or could not be read."""


def _looks_like_local_path(source: str) -> bool:
    return source.startswith((".", "/", "~")) or os.sep in source.strip("/").split("/", 1)[-1] or Path(source).exists()


def missing_weights_message(what: str, source: str, subfolder: Optional[str], reason: str) -> str:
    """Error text naming the id/path and the two ways to supply the weights."""
    where = f"'{source}'" + (f" (subfolder '{subfolder}')" if subfolder else "")
    local_hint = Path(source).name or "weights"
    hub_id = source
    if _looks_like_local_path(source):
        hub_id = DINOV2_HUB_ID if "DINOv2" in what else SVD_HUB_ID
    return (
        f"Cannot load the {what} from {where}: {reason}.\n"
        f"Supply the weights: on a machine with internet run\n"
        f"    huggingface-cli download {hub_id} "
        f"--local-dir /path/to/{local_hint}\n"
        f"copy that directory here and pass its path instead of '{source}' (e.g. --init /path/to/{local_hint}); "
        f"or, on a connected machine, allow downloads (allow_download=True / --allow-download)."
    )


def load_pretrained(
    what: str,
    loader: Callable[..., Any],
    source: ComponentSource,
    allow_download: bool,
    **kwargs: Any,
) -> Any:
    """Call ``loader(source.pretrained, subfolder=..., local_files_only=...)`` and turn failures into MissingWeightsError.

    ``loader`` is a ``from_pretrained`` classmethod (diffusers or transformers).
    """
    path = source.pretrained
    assert path is not None
    if _looks_like_local_path(path):
        root = Path(path).expanduser()
        if not root.is_dir():
            raise MissingWeightsError(missing_weights_message(what, path, source.subfolder, "no such directory"))
        if source.subfolder and not (root / source.subfolder).is_dir():
            raise MissingWeightsError(
                missing_weights_message(what, path, source.subfolder, f"{root / source.subfolder} does not exist")
            )
        path = str(root)
    call_kwargs = dict(kwargs)
    if source.subfolder:
        call_kwargs["subfolder"] = source.subfolder
    if source.variant:
        call_kwargs["variant"] = source.variant
    if not allow_download:
        call_kwargs["local_files_only"] = True
    try:
        return loader(path, **call_kwargs)
    except (OSError, ValueError, EnvironmentError) as err:
        reason = "not found in the local Hugging Face cache and downloads are off" if not allow_download else str(err)
        if _looks_like_local_path(path):
            reason = f"unreadable ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        raise MissingWeightsError(
            missing_weights_message(what, str(source.pretrained), source.subfolder, reason)
        ) from err
