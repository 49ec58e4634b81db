"""The internals of nerfstudio, viser and torch this project relies on, in one place.

Each accessor names the version it was checked against (nerfstudio is pinned in pyproject.toml; viser comes with
it). :func:`problems` re-checks every assumption against the installed packages, and ``tests/test_compat.py``
fails loudly, naming the broken one, when an upgrade changes any of them.
"""

from __future__ import annotations

import importlib.metadata
import inspect
from typing import Any, Callable, List

NERFSTUDIO_VERSION = "1.1.5"
VISER_VERSION = "0.2.7"


def event_writers() -> list:
    """nerfstudio 1.1.5: ``nerfstudio.utils.writer.EVENT_WRITERS``, the module-level list every Trainer appends its
    tensorboard/wandb writers to (and never removes them from)."""
    from nerfstudio.utils import writer

    return writer.EVENT_WRITERS


def clear_event_storage() -> None:
    """nerfstudio 1.1.5: ``writer.EVENT_STORAGE``, the module-level list of queued scalars/images."""
    from nerfstudio.utils import writer

    writer.EVENT_STORAGE.clear()


def queue_viser_message(server: Any, message: Any) -> None:
    """viser 0.2.7: ``ViserServer.scene._websock_interface.queue_message`` (no public call sends raw messages)."""
    server.scene._websock_interface.queue_message(message)


def record_viser_messages(server: Any, sink: Callable[[Any], None]) -> None:
    """viser 0.2.7: every message ``server`` queues for its clients also goes to ``sink`` (what the tests of the
    generated-clips panel observe), through the same ``_websock_interface.queue_message``."""
    interface = server.scene._websock_interface
    queue = interface.queue_message

    def record_then_queue(message: Any) -> Any:
        sink(message)
        return queue(message)

    interface.queue_message = record_then_queue


def after_viewer_update(trainer: Any, hook: Callable[[int], None]) -> None:
    """nerfstudio 1.1.5: ``Trainer._update_viewer_state(step)`` runs once per training step while the viewer is on;
    call ``hook(step)`` after it (the viewer tests probe the live server from there)."""
    update = trainer._update_viewer_state

    def update_then_hook(step: int) -> None:
        update(step)
        hook(step)

    trainer._update_viewer_state = update_then_hook


def run_javascript_message(source: str) -> Any:
    """viser 0.2.7: ``viser._messages.RunJavascriptMessage``, a message the client evaluates as JavaScript."""
    from viser import _messages

    return _messages.RunJavascriptMessage(source=source)


def set_last_lr(scheduler: Any, lrs: List[float]) -> None:
    """torch 2.x: ``LRScheduler._last_lr``, what ``get_last_lr()`` returns, after setting the groups' lr directly."""
    scheduler._last_lr = lrs


LOAD_IMAGES_METHOD = "_load_images"
"""nerfstudio 1.1.5: ``FullImageDatamanager._load_images(split, cache_images_device)`` decodes a split's images
(overridden by ``SparseViewDatamanager`` to name the unreadable file)."""


def problems() -> List[str]:
    """Every assumption above that the installed packages break (empty when all hold)."""
    found: List[str] = []
    for package, pinned in (("nerfstudio", NERFSTUDIO_VERSION), ("viser", VISER_VERSION)):
        installed = importlib.metadata.version(package)
        if installed != pinned:
            found.append(f"{package} {installed} installed, compat.py was checked against {pinned}")
    from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager
    from nerfstudio.engine.trainer import Trainer
    from nerfstudio.models.splatfacto import SplatfactoModel
    from nerfstudio.pipelines.base_pipeline import VanillaPipeline
    from nerfstudio.utils import writer

    if not isinstance(getattr(writer, "EVENT_WRITERS", None), list):
        found.append("nerfstudio.utils.writer.EVENT_WRITERS is no longer a list")
    if not isinstance(getattr(writer, "EVENT_STORAGE", None), list):
        found.append("nerfstudio.utils.writer.EVENT_STORAGE is no longer a list")
    load = getattr(FullImageDatamanager, LOAD_IMAGES_METHOD, None)
    if load is None or list(inspect.signature(load).parameters) != ["self", "split", "cache_images_device"]:
        found.append("FullImageDatamanager._load_images(split, cache_images_device) changed")
    if "def _update_viewer_state(self, step: int)" not in inspect.getsource(Trainer):  # behind a decorator
        found.append("Trainer._update_viewer_state(step) changed")
    if "def save_checkpoint(self, step: int)" not in inspect.getsource(Trainer):
        found.append("Trainer.save_checkpoint(step) changed (ItergenTrainer re-implements it)")
    if "Parameter(" not in inspect.getsource(SplatfactoModel.load_state_dict):
        found.append("SplatfactoModel.load_state_dict no longer replaces the Gaussians (IterGenSplatfactoModel's "
                     "in-place version may be unneeded)")  # fmt: skip
    source = inspect.getsource(VanillaPipeline.get_train_loss_dict)
    if "self.datamanager.next_train(step)" not in source:
        found.append("VanillaPipeline.get_train_loss_dict no longer draws its batch with datamanager.next_train")
    from viser import _messages, _scene_api

    if "_websock_interface" not in inspect.getsource(_scene_api.SceneApi.__init__):
        found.append("viser SceneApi has no _websock_interface")
    if not hasattr(_messages, "RunJavascriptMessage"):
        found.append("viser._messages.RunJavascriptMessage is gone")
    import torch

    if "_last_lr" not in inspect.getsource(torch.optim.lr_scheduler.LRScheduler.get_last_lr):
        found.append("torch LRScheduler.get_last_lr no longer returns _last_lr")
    return found
