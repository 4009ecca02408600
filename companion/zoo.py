"""The model zoo: models several notebooks need, trained once per config and cached on disk with a file lock.

A model is described by a *name*, a JSON-able *config* and the tensors it is trained on. ``cached`` builds
the model, and either loads its weights from ``runs/cache/zoo/<name>-<key>.pt`` or trains it and saves
them there. The key hashes the config, the data and the source of ``companion.models`` and
``companion.train``, so a change to any of them trains a new teacher instead of loading a stale one. A file
lock (``filelock``) makes parallel workers — ``companion run-all --jobs 2``, pytest-xdist — train each teacher
once: the second worker waits and loads.

Training is deterministic on the CPU (and runs on one thread, since float sums depend on the thread count),
so a loaded teacher equals a freshly trained one bit for bit on any machine, and a
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

from . import runtime
from .catalog import project_root


def cache_dir() -> Path:
    """``$COMPANION_CACHE`` if set, else ``<project>/runs/cache/zoo`` (git-ignored)."""
    return Path(os.environ.get("COMPANION_CACHE") or project_root() / "runs" / "cache" / "zoo")


REGISTRY: dict[str, Callable[[], nn.Module]] = {}
AFTER: dict[str, tuple[str, ...]] = {}  # entry -> the entries it continues from (it loads them, or waits for them)


def register(name: str, after: Sequence[str] = ()):
    """Register ``fn() -> model`` as the zoo entry ``name`` (it trains or loads through :func:`cached`);
    ``after`` names the entries it starts from, so a parallel build schedules it after them."""
    def deco(fn):
        REGISTRY[name] = fn
        AFTER[name] = tuple(after)
        return fn
    return deco


def names() -> list[str]:
    return sorted(REGISTRY)


def build_order(which: Sequence[str]) -> list[str]:
    """``which`` in the order a parallel build hands it to its workers: every entry after the entries it
    continues from, and among those ready, the ones more entries continue from first, then continuations, then by
    name — so a chain (``toy_sd.early`` → ``toy_sd``, the longest build) starts at once and its next link is
    handed out as soon as a worker frees up, while the independent entries fill the other worker."""
    which = list(dict.fromkeys(which))

    def depth(name: str) -> int:
        return 1 + max((depth(d) for d in AFTER.get(name, ())), default=-1)

    def descendants(name: str) -> int:
        return sum(1 for other in which if other != name and _continues_from(other, name))

    order: list[str] = []
    while len(order) < len(which):
        ready = [n for n in which if n not in order
                 and all(d in order or d not in which for d in AFTER.get(n, ()))]
        order.append(min(ready, key=lambda n: (-descendants(n), -depth(n), n)))
    return order


def _continues_from(name: str, root: str) -> bool:
    """Whether zoo entry ``name`` continues (directly or through others) from ``root``."""
    return any(d == root or _continues_from(d, root) for d in AFTER.get(name, ()))


def _build_in_worker(name: str) -> float:
    """A parallel build's unit of work: one entry in a fresh process (one line, not a live bar, per loop)."""
    os.environ[runtime.BATCH_ENV] = "1"
    return build([name])[name]


def build_parallel(which: Sequence[str], jobs: int, report: Callable[[str, float], object] = lambda n, s: None,
                   executor=None, worker: Callable[[str], float] | None = None) -> dict[str, float]:
    """Build the named entries in ``jobs`` worker processes (spawned; ``executor`` overrides the pool, ``worker``
    the per-entry function): an entry is handed out only once every entry it continues from is built, the ready
    ones in :func:`build_order`'s priority, so no worker sits on another's lock. ``report(name, seconds)`` is
    called as each finishes; returns the seconds each took."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    pending = build_order(which)
    worker = worker or _build_in_worker
    pool = executor or ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"))
    seconds: dict[str, float] = {}
    running: dict = {}
    with pool:
        while pending or running:
            for name in list(pending):
                if len(running) >= jobs:
                    break
                if all(d in seconds or d not in which for d in AFTER.get(name, ())):
                    running[pool.submit(worker, name)] = name
                    pending.remove(name)
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                name = running.pop(future)
                seconds[name] = future.result()
                report(name, seconds[name])
    return seconds


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


def _source_digest(sources: Sequence[str] | None = None) -> str:
    """Hash of the source files a model depends on: ``sources`` are paths relative to the package
    (e.g. ``"models/mae.py"``); None means every file of ``companion.models`` plus ``train.py``."""
    package = Path(__file__).parent
    paths = (sorted((package / "models").glob("*.py")) + [package / "train.py"] if sources is None
             else [package / s for s in sources])
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(name: str, config: dict, tensors: Sequence[torch.Tensor] = (),
              sources: Sequence[str] | None = None) -> str:
    """16 hex digits identifying a teacher: its name, config, training tensors and the model/loop source
    (``sources``: see ``_source_digest``)."""
    h = hashlib.sha256(json.dumps({"name": name, "config": config, "torch": torch.__version__},
                                  sort_keys=True, default=str).encode())
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str((tuple(t.shape), t.dtype)).encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.float().numpy().tobytes())
    h.update(_source_digest(sources).encode())
    return h.hexdigest()[:16]


def cached(name: str, config: dict, build: Callable[[], nn.Module], train: Callable[[nn.Module], object],
           tensors: Sequence[torch.Tensor] = (), directory: str | Path | None = None,
           sources: Sequence[str] | None = None) -> nn.Module:
    """The teacher ``build()`` with weights trained by ``train(model)``, cached on disk; returned in eval mode
    on the CPU with ``requires_grad`` off.

    ``config`` must contain everything that changes the trained weights besides ``tensors`` (steps, seed,
    learning rate, model sizes, ...). The model returned is frozen: a teacher is never trained by its student.
    ``sources`` narrows the source files whose change retrains it (default: all of ``companion.models`` and
    ``train.py``).
    """
    if not name.replace("_", "").replace("-", "").isalnum():
        raise ValueError(f"teacher name must be alphanumeric with - or _, got {name!r}")
    directory = Path(directory) if directory is not None else cache_dir()
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}-{cache_key(name, config, tensors, sources)}.pt"
    with FileLock(str(path) + ".lock"):
        model = build()
        if path.exists():
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        else:
            threads = torch.get_num_threads()
            torch.set_num_threads(1)  # CPU results depend on the thread count: one thread, the same weights anywhere
            try:
                train(model)
            finally:
                torch.set_num_threads(threads)
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
                   batch_size: int = 64, device: str = "auto", sources: Sequence[str] | None = None,
                   **vit_kwargs) -> nn.Module:
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

    return cached("supervised_vit", config, build, train, (images, labels), sources=sources)


def mae(images: torch.Tensor, steps: int, seed: int = 0, ratio: float = 0.75, lr: float = 3e-3,
        batch_size: int = 64, device: str = "auto", sources: Sequence[str] | None = None, **mae_kwargs) -> nn.Module:
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

    return cached("mae", config, build, train, (images,), sources=sources)


# ----------------------------------------------------------------------------------------------------
# The masked-image-modelling zoo: one tiny MAE, its SimMIM continuation and a supervised ViT of the same
# encoder shape, on 32-px images in 4-px patches (an 8×8 token grid). The MIM notebooks continue from these,
# so their arms compare methods on an encoder that has learned (a few hundred steps from scratch do not).

MIM_ARCH = dict(image_size=32, patch_size=4, in_channels=3, dim=64, depth=4, heads=4)
MIM_MAE = dict(decoder_dim=64, decoder_depth=2, norm_pix_loss=True)  # MAE's per-patch normalised target
# the source files the MIM zoo depends on (an edit elsewhere in companion.models does not retrain it)
MIM_SOURCES = ("models/layers.py", "models/mae.py", "models/vit.py", "masks/tokens.py", "train.py", "mim.py")
MIM_RECIPE = dict(corpus=12000, corpus_seed=0, seed=0, ratio=0.75, batch_size=128,
                  mae_steps=1500, mae_lr=2e-3, simmim_steps=300, simmim_lr=1e-3, vit_steps=600, vit_lr=2e-3)


def unfrozen(model: nn.Module) -> nn.Module:
    """A trainable deep copy of a (frozen) zoo model, in train mode: the start of a continued-training arm."""
    import copy

    model = copy.deepcopy(model).train()
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _mim_corpus() -> torch.Tensor:
    from .data.natural import mim_corpus

    return mim_corpus(MIM_RECIPE["corpus"], seed=MIM_RECIPE["corpus_seed"]).images


@register("mim.mae")
def mim_mae(device: str = "auto") -> nn.Module:
    """The zoo's tiny MAE: ``MIM_ARCH`` encoder, random 75 % masks, per-patch normalised pixel targets,
    ``mae_steps`` steps on ``data.natural.mim_corpus`` (natural crops + Fashion-MNIST). Frozen; continue from
    ``unfrozen(zoo.mim_mae())``."""
    R = MIM_RECIPE
    return mae(_mim_corpus(), R["mae_steps"], seed=R["seed"], ratio=R["ratio"], lr=R["mae_lr"],
               batch_size=R["batch_size"], device=device, sources=MIM_SOURCES, **MIM_ARCH, **MIM_MAE)


@register("mim.simmim", after=("mim.mae",))
def mim_simmim(device: str = "auto") -> nn.Module:
    """SimMIM (mask token in the encoder, linear head) started from ``mim_mae``'s encoder and trained
    ``simmim_steps`` more steps with random 75 % masks on the same corpus. Frozen."""
    from .mim import mask_generator, pretrain
    from .models import MAE
    from .runtime import resolve_device

    R = MIM_RECIPE
    images = _mim_corpus()
    start = mim_mae(device)
    config = dict(recipe=R, arch=MIM_ARCH, device=resolve_device(device).type)

    def build():
        torch.manual_seed(R["seed"])
        return MAE(mode="simmim", decoder_depth=0, norm_pix_loss=True, decoder_dim=MIM_ARCH["dim"], **MIM_ARCH)

    def train(model):
        encoder = {k: v for k, v in start.state_dict().items() if not k.startswith(("decoder", "mask_token"))}
        model.load_state_dict(encoder, strict=False)  # encoder from the MAE; mask token and head are new
        pretrain(model, images, mask_generator("random", model.grid, R["ratio"]), R["simmim_steps"],
                 seed=R["seed"], lr=R["simmim_lr"], batch_size=R["batch_size"], device=device,
                 desc="zoo: SimMIM from the MAE")

    return cached("mim_simmim", config, build, train, (images,), sources=MIM_SOURCES)


@register("mim.vit")
def mim_vit(device: str = "auto") -> nn.Module:
    """A supervised ``ViT`` with the ``MIM_ARCH`` encoder trained on Fashion-MNIST classes (``fashion32``):
    the supervised teacher of the distillation notebooks. Needs Fashion-MNIST (``DataError`` otherwise)."""
    from .data.natural import fashion32

    R = MIM_RECIPE
    tr = fashion32("train", n=R["corpus"] // 2, seed=R["corpus_seed"] + 1)
    return supervised_vit(tr.images, tr.labels, R["vit_steps"], seed=R["seed"], lr=R["vit_lr"],
                          batch_size=R["batch_size"], device=device, sources=MIM_SOURCES,
                          num_classes=len(tr.class_names), **MIM_ARCH)


# ----------------------------------------------------------------------------------------------------
# Named entries: the models the notebooks' ci runs load, trained by `companion zoo build` before them.
# Each recipe repeats its notebook's call with the notebook's ci parameters (tests/test_notebooks.py checks
# that a notebook run after `zoo build` trains nothing new, so a recipe that drifts from its notebook fails).


def _ci(slug: str) -> dict:
    from .params import profile_values

    return profile_values(slug, "ci")


# ----------------------------------------------------------------------------------------------------
# tgm_video_mae: the video–text aligner that stands in for CLIP and a video MAE warm start, both trained once
# on a fixed corpus of captioned clips (seed 0; the notebook's probe clips are drawn with other seeds).
TGM_SOURCES = ("models/layers.py", "models/mae.py", "models/video_mae.py", "train.py")


def tgm_corpus(P: dict | None = None):
    """The clips the tgm_video_mae zoo models train on (a ``data.video.ClipSet``): ``P["n_corpus"]`` clips of
    every scene, captions naming colour and shape only. ``P``: the notebook's parameters (default: ci)."""
    from .data import video

    P = P or _ci("tgm_video_mae")
    return video.make_clips(P["n_corpus"], P["frames"], P["image_size"], P["speed"], scenes=video.SCENES,
                            name_direction=False, texture=P["texture"], distractor_radius=(0.2, 0.28), seed=0)


def tgm_arch(P: dict, dim: int) -> dict:
    """``VideoMAE`` keyword arguments of the tgm_video_mae notebook at width ``dim``."""
    return dict(image_size=P["image_size"], patch_size=P["patch_size"], frames=P["frames"], tubelet=P["tubelet"],
                dim=dim, depth=P["depth"], heads=4, decoder_dim=dim, decoder_depth=P["decoder_depth"])


def video_text_aligner(clips: torch.Tensor, captions: torch.Tensor, steps: int, seed: int = 0, embed_dim: int = 32,
                       lr: float = 3e-3, batch_size: int = 64, device: str = "auto", sources=None,
                       **mae_kwargs) -> nn.Module:
    """A ``VideoText`` trained only with the max-over-tubes video–text InfoNCE on unmasked clips [N, C, T, H, W]
    and captions [N, W]: its tube–caption similarities are text-guided masking's scores. Cached, frozen."""
    from .models.video_mae import VideoMAE, VideoText
    from .runtime import resolve_device
    from .train import fit

    config = dict(steps=steps, seed=seed, embed_dim=embed_dim, lr=lr, batch_size=batch_size, mae=mae_kwargs,
                  device=resolve_device(device).type)

    def build():
        torch.manual_seed(seed)
        return VideoText(VideoMAE(**mae_kwargs), embed_dim)

    def train(model):
        fit(model, clips, captions, steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
            loss_fn=lambda m, x, c: m.loss(x, c, None, recon_weight=0.0, vtc_weight=1.0, pool="max"),
            desc="zoo: video-text aligner")

    return cached("video_text_aligner", config, build, train, (clips, captions), sources=sources)


def video_mae_warm_start(clips: torch.Tensor, steps: int, seed: int = 0, ratio: float = 0.75, embed_dim: int = 32,
                         lr: float = 3e-3, batch_size: int = 64, device: str = "auto", sources=None,
                         **mae_kwargs) -> nn.Module:
    """A ``VideoText`` whose ``VideoMAE`` is pretrained with random tube masks at ``ratio`` (VideoMAE) on clips
    [N, C, T, H, W]; its text head is untrained. Cached, frozen; continue from ``unfrozen(...)``."""
    from .masks import token_ratio_mask
    from .models.video_mae import VideoMAE, VideoText
    from .runtime import resolve_device
    from .train import fit

    config = dict(steps=steps, seed=seed, ratio=ratio, embed_dim=embed_dim, lr=lr, batch_size=batch_size,
                  mae=mae_kwargs, device=resolve_device(device).type)
    g = torch.Generator().manual_seed(seed + 1)

    def build():
        torch.manual_seed(seed)
        return VideoText(VideoMAE(**mae_kwargs), embed_dim)

    def loss_fn(m, x, _):
        return m.loss(x, None, token_ratio_mask(len(x), m.mae.num_patches, ratio, g).to(x.device))

    def train(model):
        fit(model, clips, None, steps, batch_size=batch_size, lr=lr, seed=seed, device=device, loss_fn=loss_fn,
            desc="zoo: video MAE")

    return cached("video_mae", config, build, train, (clips,), sources=sources)


@register("tgm_video_mae.aligner")
def tgm_video_aligner(P: dict | None = None) -> nn.Module:
    """tgm_video_mae's video–text aligner (the stand-in for CLIP) at the notebook's parameters ``P`` (default ci)."""
    P = P or _ci("tgm_video_mae")
    corpus = tgm_corpus(P)
    return video_text_aligner(corpus.clips, corpus.captions, P["aligner_steps"], embed_dim=P["aligner_dim"],
                              lr=P["lr"], batch_size=P["batch_size"], device=P.get("device", "auto"),
                              sources=TGM_SOURCES, **tgm_arch(P, P["aligner_dim"]))


@register("tgm_video_mae.mae")
def tgm_video_warm_start(P: dict | None = None) -> nn.Module:
    """tgm_video_mae's video MAE warm start (random tube masks) at the notebook's parameters ``P`` (default ci)."""
    P = P or _ci("tgm_video_mae")
    return video_mae_warm_start(tgm_corpus(P).clips, P["warm_steps"], ratio=P["mask_ratio"],
                                embed_dim=P["aligner_dim"], lr=P["lr"], batch_size=P["batch_size"],
                                device=P.get("device", "auto"), sources=TGM_SOURCES, **tgm_arch(P, P["dim"]))


# ----------------------------------------------------------------------------------------------------
# The diffusion family's text-to-image + inpainting model (prompt_to_prompt, diffusionguard, blended_video_edit;
# maskunet starts from the early checkpoint) and the shapes feature net (toy-FID features, attribute classifier).
TOY_SD_SOURCES = ("models/layers.py", "models/unet.py", "models/unet1d.py", "models/toy_sd.py", "data/scenes.py",
                  "data/images.py", "data/video.py", "diffusion/gaussian.py", "masks/freeform.py", "train.py")
TOY_SD_RECIPE = dict(corpus=20000, corpus_seed=100, num_steps=100, early_steps=300, steps=1700, batch_size=64,
                     lr=2e-3, caption_drop=0.1, inpaint=0.5, seed=0)


def toy_sd_corpus():
    """The captioned 16×16 scenes ``toy_sd`` trains on (``data.scenes.make_scenes``, seed ``corpus_seed``); the
    notebooks draw their scenes with other seeds."""
    from .data.scenes import make_scenes

    R = TOY_SD_RECIPE
    return make_scenes(R["corpus"], seed=R["corpus_seed"])


def toy_sd_schedule():
    """The noise schedule ``toy_sd`` is trained with (cosine, ``num_steps`` levels)."""
    from .diffusion.gaussian import Schedule

    return Schedule(TOY_SD_RECIPE["num_steps"])


def _toy_sd_train(model: nn.Module, steps: int, seed: int, desc: str, device: str) -> None:
    """``steps`` of the ε-prediction loss on the corpus: captions dropped (all ``<pad>``) with probability
    ``caption_drop``; a share ``inpaint`` of the rows gets an inpainting condition whose mask (1 = fill) is, in
    equal shares, a free-form stroke mask, the objects or the background; the other rows are text-to-image
    (mask all ones: everything to fill, nothing known)."""
    from .data.scenes import PAD
    from .diffusion.gaussian import diffusion_loss
    from .masks.freeform import free_form
    from .models.toy_sd import to_model
    from .train import fit

    R = TOY_SD_RECIPE
    corpus = toy_sd_corpus()
    inputs = torch.cat([to_model(corpus.images), corpus.objects.any(1, keepdim=True).float()], dim=1)
    sched = toy_sd_schedule()
    g = torch.Generator().manual_seed(seed + 1)

    def loss_fn(m, xo, captions):
        x0, objects = xo[:, :3], xo[:, 3:]
        n, size = len(x0), x0.shape[-1]
        drop = torch.rand(n, generator=g) < R["caption_drop"]
        captions = torch.where(drop[:, None].to(captions.device), PAD, captions)
        kind = torch.randint(0, 3, (n,), generator=g)
        inpaint = (torch.rand(n, generator=g) < R["inpaint"]).float()
        strokes = free_form(n, size, torch.empty(n).uniform_(0.2, 0.6, generator=g), generator=g).float()
        mask = torch.stack([strokes.view(n, 1, size, size).to(x0), objects, 1 - objects])[kind, torch.arange(n)]
        inpaint = inpaint.view(n, 1, 1, 1).to(x0)
        mask = mask * inpaint + (1 - inpaint)  # text-to-image rows: fill everything
        cond = {"captions": captions, "mask": mask, "masked": x0 * (1 - mask)}
        return diffusion_loss(m, x0, sched, cond, generator=g)

    fit(model, inputs, corpus.captions, steps, batch_size=R["batch_size"], lr=R["lr"], seed=seed, device=device,
        loss_fn=loss_fn, desc=desc)


def _toy_sd_build() -> nn.Module:
    from .models.toy_sd import ToySD

    torch.manual_seed(TOY_SD_RECIPE["seed"])
    return ToySD()


@register("toy_sd.early")
def toy_sd_early(device: str = "auto") -> nn.Module:
    """``ToySD`` after ``early_steps`` steps of the recipe: the under-trained base of maskunet. Frozen."""
    from .runtime import resolve_device

    R = TOY_SD_RECIPE
    config = dict(recipe=R, stage="early", device=resolve_device(device).type)
    return cached("toy_sd_early", config, _toy_sd_build,
                  lambda m: _toy_sd_train(m, R["early_steps"], R["seed"], "zoo: toy_sd (early)", device),
                  sources=TOY_SD_SOURCES)


@register("toy_sd", after=("toy_sd.early",))
def toy_sd(device: str = "auto") -> nn.Module:
    """``ToySD`` trained ``steps`` more steps from ``toy_sd_early`` (a fresh cosine schedule, another batch
    seed): the text-to-image and inpainting model of the editing notebooks. Frozen."""
    from .runtime import resolve_device

    R = TOY_SD_RECIPE
    start = toy_sd_early(device)
    config = dict(recipe=R, stage="full", device=resolve_device(device).type)

    def train(model):
        model.load_state_dict(start.state_dict())
        _toy_sd_train(model, R["steps"], R["seed"] + 10, "zoo: toy_sd", device)

    return cached("toy_sd", config, _toy_sd_build, train, sources=TOY_SD_SOURCES)


FEATNET_SOURCES = ("models/cnn.py", "data/scenes.py", "data/images.py", "data/video.py", "train.py")
FEATNET_RECIPE = dict(corpus=6000, corpus_seed=200, steps=300, batch_size=64, lr=3e-3, seed=0)


def featnet_labels(colours: torch.Tensor, shapes: torch.Tensor) -> torch.Tensor:
    """The joint class ``colour · 4 + shape`` of ``shapes_featnet`` (16 classes)."""
    from .data.images import SHAPE_CLASSES

    return colours * len(SHAPE_CLASSES) + shapes


@register("shapes_featnet")
def shapes_featnet(device: str = "auto") -> nn.Module:
    """A ``SmallCNN`` trained on 16×16 single-object scenes (``data.scenes``) to tell the 16 colour × shape classes
    (``featnet_labels``): its pooled features are the toy-FID features (``eval.toy_fid``), its logits the
    attribute classifier of generated objects. Frozen."""
    from .data.scenes import make_scenes
    from .models.cnn import SmallCNN
    from .runtime import resolve_device
    from .train import fit

    R = FEATNET_RECIPE
    data = make_scenes(R["corpus"], two_objects=0.0, seed=R["corpus_seed"])
    labels = featnet_labels(data.colours[:, 0], data.shapes[:, 0])
    config = dict(recipe=R, device=resolve_device(device).type)

    def build():
        torch.manual_seed(R["seed"])
        return SmallCNN(3, 16, widths=(16, 32, 64))

    def train(model):
        fit(model, data.images, labels, R["steps"], batch_size=R["batch_size"], lr=R["lr"], seed=R["seed"],
            device=device, desc="zoo: shapes feature net")

    return cached("shapes_featnet", config, build, train, (data.images, labels), sources=FEATNET_SOURCES)


# The open-vocabulary family's toy CLIP (pmp, mask_adapter, frozenseg, fgvp, mask_tuning, uground, stamp): the
# package's ViT and a bidirectional GPT text tower trained with the symmetric InfoNCE on image-level captions of
# referring scenes only — the patch tokens are never taught to localise, as in CLIP. Every class (the unseen ones
# too) appears in captions, as CLIP saw web captions. A share ``dof`` of the images has depth of field (one object
# sharp, the rest blurred, the caption naming only it); ``toy_clip_nodof`` is the same recipe without them (fgvp).
TOY_CLIP_SOURCES = ("models/clip.py", "models/vit.py", "models/gpt.py", "models/layers.py", "masks/attention.py",
                    "data/refer.py", "data/words.py", "data/filters.py", "data/images.py", "data/video.py",
                    "train.py")
TOY_CLIP_RECIPE = dict(corpus=4000, close_ups=4000, corpus_seed=110, objects=(1, 6), clutter=(0, 2),
                       close_up_radius=(3.0, 13.0), dof=0.25, steps=1500, batch_size=128, lr=1e-3,
                       weight_decay=0.05, seed=0)


def toy_clip_corpus(dof: float | None = None):
    """The captioned scenes the toy CLIPs train on: ``corpus`` referring scenes with 1–6 objects plus
    ``close_ups`` scenes of one or two objects of any size up to the frame (radius ``close_up_radius``), so that
    objects are seen at every scale, as on the web (a cropped object fills the frame), and so that colour alone
    rarely tells a caption from the batch's others; a share ``dof`` (default the recipe's) of each has depth of
    field. Returns (images (N, 3, 32, 32), captions (N, CAPTION_LEN))."""
    from .data import refer

    R = TOY_CLIP_RECIPE
    dof = R["dof"] if dof is None else dof
    scenes = refer.make_refer_scenes(R["corpus"], seed=R["corpus_seed"], objects=R["objects"],
                                     clutter=R["clutter"], dof=dof)
    close = refer.make_refer_scenes(R["close_ups"], seed=R["corpus_seed"] + 1, objects=(1, 2), clutter=(0, 1),
                                    radius=R["close_up_radius"], dof=dof)
    return torch.cat([scenes.images, close.images]), torch.cat([scenes.captions, close.captions])


def _toy_clip(name: str, dof: float, device: str) -> nn.Module:
    from .data import refer
    from .models.clip import ToyCLIP
    from .runtime import resolve_device
    from .train import fit

    R = {**TOY_CLIP_RECIPE, "dof": dof}
    config = dict(recipe=R, device=resolve_device(device).type)

    def build():
        torch.manual_seed(R["seed"])
        return ToyCLIP(len(refer.VOCAB), refer.CAPTION_LEN)

    def train(model):
        images, captions = toy_clip_corpus(dof)
        fit(model, images, captions, R["steps"], batch_size=R["batch_size"], lr=R["lr"],
            weight_decay=R["weight_decay"], seed=R["seed"], device=device, loss_fn=lambda m, x, y: m(x, y),
            desc=f"zoo: {name}")

    return cached(name, config, build, train, sources=TOY_CLIP_SOURCES)


@register("toy_clip")
def toy_clip(device: str = "auto") -> nn.Module:
    """``ToyCLIP`` trained on ``TOY_CLIP_RECIPE`` (a share ``dof`` of depth-of-field images). Frozen."""
    return _toy_clip("toy_clip", TOY_CLIP_RECIPE["dof"], device)


@register("toy_clip_nodof")
def toy_clip_nodof(device: str = "auto") -> nn.Module:
    """The same recipe with no depth-of-field images (fgvp's control). Frozen."""
    return _toy_clip("toy_clip_nodof", 0.0, device)


# The class-agnostic promptable segmenter (frozenseg injects its prompt-free features; uground prompts it): trained
# on every object and clutter item of referring scenes without their labels, one random object per prompt kind
# per image each step (a positive point plus sometimes a negative one, a jittered box, an IoU-jittered dense mask).
SAM_LITE_SOURCES = ("models/sam_lite.py", "masks/jitter.py", "data/refer.py", "data/words.py", "data/filters.py",
                    "data/images.py", "data/video.py", "train.py")
SAM_LITE_RECIPE = dict(corpus=3000, corpus_seed=150, steps=400, batch_size=32, lr=3e-3, seed=151, dim=64)


@register("sam_lite")
def sam_lite(device: str = "auto") -> nn.Module:
    """``SamLite`` (``models.sam_lite``) trained with ``SAM_LITE_RECIPE`` on ``corpus`` referring scenes (all 24
    classes and clutter, seed ``corpus_seed``): the BCE + dice loss of one prompt of each kind per image, each on
    a random non-empty slot (``sample_prompts``). The sparse-embedding path is never trained here. Frozen."""
    from .data import refer
    from .models.sam_lite import PROMPT_KINDS, SamLite, mask_loss, sample_prompts
    from .runtime import resolve_device
    from .train import fit

    R = SAM_LITE_RECIPE
    scenes = refer.make_refer_scenes(R["corpus"], seed=R["corpus_seed"])
    config = dict(recipe=R, device=resolve_device(device).type)

    def build():
        torch.manual_seed(R["seed"])
        return SamLite(dim=R["dim"])

    def train(model):
        g = torch.Generator().manual_seed(R["seed"] + 1)

        def loss_fn(m, images, instances):
            features = m.image_features(images)
            present = instances.flatten(2).any(-1).float().cpu()
            losses = {}
            for kind in PROMPT_KINDS:
                slot = torch.multinomial(present, 1, generator=g)[:, 0]
                target = instances.cpu()[torch.arange(len(slot)), slot]
                prompts = {k: v.to(images.device) for k, v in sample_prompts(target, kind, g).items()}
                losses[kind] = mask_loss(m(None, features=features, **prompts), target.to(images.device))
            return {"loss": sum(losses.values()), **losses}

        fit(model, scenes.images, scenes.instances, R["steps"], batch_size=R["batch_size"], lr=R["lr"],
            seed=R["seed"], device=device, loss_fn=loss_fn, desc="zoo: sam_lite")

    return cached("sam_lite", config, build, train, (scenes.images, scenes.instances), sources=SAM_LITE_SOURCES)
