"""The model directory and the frozen components: where an :class:`IterGenDiffusionModel` comes from.

The ``from_config`` / ``from_pretrained`` plumbing kept apart from the model itself: the layout of a
``save_pretrained`` directory (``MODEL_FILE`` index + one subfolder per component), reading its index without
loading weights, and building each frozen part (VAE, CLIP, DINOv2, scheduler config) from a
:class:`ComponentSource` -- pretrained where the source names weights, random init from its kwargs otherwise.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Union

from diffusers import AutoencoderKL, AutoencoderKLTemporalDecoder, AutoencoderTiny, EulerDiscreteScheduler
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection, Dinov2Config, Dinov2Model

from itergen_ns.diffusion.configs import TAEF2_SOURCE, ComponentSource, DiffusionModelConfig, config_from_dict
from itergen_ns.diffusion.image_features import ImageFeatureEncoder
from itergen_ns.diffusion.weights import MissingWeightsError, load_pretrained


MODEL_FILE = "itergen_diffusion.json"
MODEL_FORMAT = "itergen-diffusion"
MODEL_FORMAT_VERSION = 2  # 2: SamplingConfig + ClipStatistics in the config
SUBFOLDERS = {"unet": "unet", "view_tokenizer": "view_tokenizer", "vae": "vae", "clip": "image_encoder", "dino": "dino"}

VAE = Union[AutoencoderKLTemporalDecoder, AutoencoderKL, AutoencoderTiny]


def read_model_meta(path: Union[str, Path]) -> Dict:
    """The JSON index of a model directory written by ``save_pretrained`` (config, scheduler), checked."""
    meta_file = Path(path) / MODEL_FILE
    if not meta_file.exists():
        raise MissingWeightsError(
            f"{meta_file} not found: '{path}' is not an itergen diffusion checkpoint (save_pretrained output, "
            f"e.g. runs/diffusion/latest)"
        )
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != MODEL_FORMAT or meta.get("version") != MODEL_FORMAT_VERSION:
        raise ValueError(f"{meta_file}: format {meta.get('format')!r} v{meta.get('version')!r} not supported")
    return meta


def read_model_config(path: Union[str, Path]) -> DiffusionModelConfig:
    """A saved model's config (with its SamplingConfig and ClipStatistics) without loading any weights."""
    return config_from_dict(read_model_meta(path)["config"])


# ------------------------------------------------------------------------------------------------ builders


def _cross_attention_dim(unet) -> int:
    dim = unet.config.cross_attention_dim
    return int(dim[0] if isinstance(dim, (list, tuple)) else dim)


def _image_encoder(
    config: DiffusionModelConfig, clip: CLIPVisionModelWithProjection, dino: Dinov2Model
) -> ImageFeatureEncoder:
    """Wrap built CLIP and DINOv2 models with the config's input sizes and normalisation."""
    return ImageFeatureEncoder(
        clip,
        dino,
        config.clip_image_size,
        config.dino_image_size,
        config.clip_mean,
        config.clip_std,
        config.dino_mean,
        config.dino_std,
    )


def _build_vae(source: ComponentSource, allow_download: bool) -> VAE:
    kwargs = dict(source.kwargs)
    cls_name = kwargs.pop("class_name", "AutoencoderKLTemporalDecoder")
    if cls_name == "AutoencoderTinyPool":
        from itergen_ns.diffusion.taef2 import AutoencoderTinyPool, load_taef2

        if source.pretrained == TAEF2_SOURCE:
            return load_taef2()
        if source.pretrained:
            return load_pretrained("VAE (AutoencoderTinyPool)", AutoencoderTinyPool.from_pretrained, source, False)
        raise ValueError("vae class AutoencoderTinyPool needs pretrained weights ('taef2' or a saved folder)")
    vae_cls = {"AutoencoderKLTemporalDecoder": AutoencoderKLTemporalDecoder, "AutoencoderKL": AutoencoderKL}[cls_name]
    if source.pretrained:
        return load_pretrained(f"VAE ({cls_name})", vae_cls.from_pretrained, source, allow_download)
    return vae_cls(**kwargs)  # type: ignore[return-value]  # dict of two classes: mypy joins them to object


def _build_clip(source: ComponentSource, allow_download: bool) -> CLIPVisionModelWithProjection:
    if source.pretrained:
        return load_pretrained(
            "CLIP image encoder (CLIPVisionModelWithProjection)",
            CLIPVisionModelWithProjection.from_pretrained,
            source,
            allow_download,
        )
    return CLIPVisionModelWithProjection(CLIPVisionConfig(**source.kwargs))


def _build_dino(source: ComponentSource, allow_download: bool) -> Dinov2Model:
    if source.pretrained:
        return load_pretrained(
            "DINOv2 image encoder (Dinov2Model)", Dinov2Model.from_pretrained, source, allow_download
        )
    return Dinov2Model(Dinov2Config(**source.kwargs))


def _scheduler_config(source: ComponentSource, allow_download: bool) -> Dict:
    if source.pretrained:
        sched = load_pretrained("scheduler", EulerDiscreteScheduler.from_pretrained, source, allow_download)
        return dict(sched.config)
    return dict(EulerDiscreteScheduler(**source.kwargs).config)
