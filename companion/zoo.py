"""The model zoo: models several notebooks need, trained once per config and cached on disk with a file lock.

A model is described by a *name*, a JSON-able *config* and the tensors it is trained on. ``cached`` builds
the model, and either loads its weights from ``runs/cache/zoo/<name>-<key>.pt`` or trains it and saves
them there. The key hashes the config, the data and the source of ``companion.models`` and
``companion.train``, so a change to any of them trains a new teacher instead of loading a stale one. A file
lock (``filelock``) makes parallel workers — ``companion run-all --jobs 2``, pytest-xdist — train each teacher
once: the second worker waits and loads.

Training is deterministic on the CPU, so a loaded teacher equals a freshly trained one bit for bit, and a
notebook's numbers do not depend on whether the cache was warm.

Named entries (``register``) are what ``companion zoo build [NAME ...]`` (and ``make zoo``) trains ahead
of the notebooks, with the arguments the notebooks' ``ci`` runs use, so that CI trains each once and the
notebooks load them. ``ema_update`` is the exponential-moving-average teacher of BYOL/DINO/iBOT-style methods.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn as nn
from filelock import FileLock

from .catalog import project_root


def cache_dir() -> Path:
    """``$COMPANION_CACHE`` if set, else ``<project>/runs/cache/zoo`` (git-ignored)."""
    return Path(os.environ.get("COMPANION_CACHE") or project_root() / "runs" / "cache" / "zoo")


REGISTRY: dict[str, Callable[[], nn.Module]] = {}


def register(name: str):
    """Register ``fn() -> model`` as the zoo entry ``name`` (it trains or loads through :func:`cached`)."""
    def deco(fn):
        REGISTRY[name] = fn
        return fn
    return deco


def names() -> list[str]:
    return sorted(REGISTRY)


def build(which: Sequence[str] | None = None) -> dict[str, float]:
    """Train (or load) the named entries, all by default; returns the seconds each took."""
    import time

    unknown = sorted(set(which or ()) - set(REGISTRY))
    if unknown:
        raise KeyError(f"unknown zoo model {unknown[0]!r}; choose from {', '.join(names()) or '(none)'}")
    seconds = {}
    for name in which or names():
        t0 = time.perf_counter()
        REGISTRY[name]()
        seconds[name] = time.perf_counter() - t0
    return seconds


def _source_digest() -> str:
    from . import models, train

    h = hashlib.sha256()
    for path in sorted(Path(models.__file__).parent.glob("*.py")) + [Path(train.__file__)]:
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(name: str, config: dict, tensors: Sequence[torch.Tensor] = ()) -> str:
    """16 hex digits identifying a teacher: its name, config, training tensors and the model/loop source."""
    h = hashlib.sha256(json.dumps({"name": name, "config": config, "torch": torch.__version__},
                                  sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    h.update(_source_digest().encode())
    return h.hexdigest()[:16]


def cached(name: str, config: dict, build: Callable[[], nn.Module], train: Callable[[nn.Module], object],
           tensors: Sequence[torch.Tensor] = (), directory: str | Path | None = None) -> nn.Module:
    """The teacher ``build()`` with weights trained by ``train(model)``, cached on disk; returned in eval mode
    on the CPU with ``requires_grad`` off.

    ``config`` must contain everything that changes the trained weights besides ``tensors`` (steps, seed,
    learning rate, model sizes, ...). The model returned is frozen: a teacher is never trained by its student.
    """
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"teacher name must be alphanumeric with - or _, got {name!r}")
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{cache_key(name, config, tensors)}.pt"
    with FileLock(str(path) + ".lock"):
        model = build()
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            train(model)
            model = model.cpu()
            tmp = path.with_suffix(".tmp")
            torch.save(model.state_dict(), tmp)
            os.replace(tmp, path)  # atomic: a reader never sees half a file
    model = model.cpu().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter (buffers copied)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.lerp_(s.detach().to(t.dtype), 1.0 - momentum)
    for t, s in zip(teacher.buffers(), student.buffers(), strict=True):
        t.copy_(s)


def supervised_vit(images: torch.Tensor, labels: torch.Tensor, steps: int, seed: int = 0, lr: float = 3e-3,
                   batch_size: int = 64, device: str = "auto", **vit_kwargs) -> nn.Module:
    """A tiny ``ViT`` trained with cross-entropy on ``images``/``labels`` (the "supervised teacher"), cached."""
    from .models import ViT
    from .runtime import resolve_device
    from .train import fit

    config = dict(steps=steps, seed=seed, lr=lr, batch_size=batch_size, vit=vit_kwargs,
                  device=resolve_device(device).type)

    def build():
        torch.manual_seed(seed)
        return ViT(**vit_kwargs)

    def train(model):
        fit(model, images, labels, steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
            desc="teacher: supervised ViT")

    return cached("supervised_vit", config, build, train, (images, labels))


def mae(images: torch.Tensor, steps: int, seed: int = 0, ratio: float = 0.75, lr: float = 3e-3,
        batch_size: int = 64, device: str = "auto", **mae_kwargs) -> nn.Module:
    """A tiny ``MAE`` pretrained with random masks at ``ratio`` on ``images`` (the "MIM teacher"), cached."""
    from .mim import mask_generator, pretrain
    from .models import MAE
    from .runtime import resolve_device

    config = dict(steps=steps, seed=seed, ratio=ratio, lr=lr, batch_size=batch_size, mae=mae_kwargs,
                  device=resolve_device(device).type)

    def build():
        torch.manual_seed(seed)
        return MAE(**mae_kwargs)

    def train(model):
        pretrain(model, images, mask_generator("random", model.grid, ratio), steps, seed=seed, lr=lr,
                 batch_size=batch_size, device=device, desc="teacher: MAE")

    return cached("mae", config, build, train, (images,))


# ----------------------------------------------------------------------------------------------------
# Named entries: the models the notebooks' ci runs load, trained by `companion zoo build` before them.
# Each recipe repeats its notebook's call with the notebook's ci parameters (tests/test_notebooks.py checks
# that a notebook run after `zoo build` trains nothing new, so a recipe that drifts from its notebook fails).


def _ci(slug: str) -> dict:
    from .params import profile_values

    return profile_values(slug, "ci")


def _shapes(n_train: int, n_test: int, size: int, background: str, seed: int):
    from .data import make_shapes

    return make_shapes(n_train + n_test, size, background, seed=seed).split(n_train)[0]


@register("maskalign.supervised_vit")
def _maskalign_teacher() -> nn.Module:
    P = _ci("maskalign")
    tr = _shapes(P["n_train"], P["n_test"], P["image_size"], P["background"], P["seed"])
    return supervised_vit(tr.images, tr.labels, P["teacher_steps"], seed=P["seed"], batch_size=P["batch_size"],
                          device="auto", num_classes=len(tr.class_names), image_size=P["image_size"],
                          patch_size=P["patch_size"], dim=P["dim"], depth=P["depth"], heads=P["heads"])


def _hybrid_arch(P: dict, channels: int) -> dict:
    return dict(image_size=P["image_size"], patch_size=P["patch_size"], in_channels=channels, dim=P["dim"],
                depth=P["depth"], heads=P["heads"])


@register("hybrid_distill.supervised_vit")
def _hybrid_supervised_teacher() -> nn.Module:
    P = _ci("hybrid_distill")
    tr = _shapes(P["n_train"], P["n_test"], P["image_size"], "varied", P["seed"])
    return supervised_vit(tr.images, tr.labels, P["teacher_steps"], seed=P["seed"], device="auto",
                          num_classes=len(tr.class_names), **_hybrid_arch(P, tr.images.shape[1]))


@register("hybrid_distill.mae")
def _hybrid_mim_teacher() -> nn.Module:
    P = _ci("hybrid_distill")
    tr = _shapes(P["n_train"], P["n_test"], P["image_size"], "varied", P["seed"])
    return mae(tr.images, P["mae_steps"], seed=P["seed"], ratio=P["mask_ratio"], device="auto",
               decoder_depth=P["mae_decoder_depth"], **_hybrid_arch(P, tr.images.shape[1]))
