"""Regularized Mask Tuning (R-AMT; Zheng et al., ICCV 2023) at toy scale: binary masks on the frozen attention
weights of a toy CLIP's image tower, learned on few-shot data of a shifted domain, with gradient dropout.

Following the official code (``wuw2019/R-AMT``: ``code/modules/masklayers.py``, ``code/trainers/masktuning.py``,
``code/configs/trainers/MASK/vit_b16.yaml``; read, not copied):

- every weight of the selected layers gets a real-valued score; the forward pass uses the weight times the hard
  mask ``score > threshold`` and the backward pass passes the mask's gradient straight through to the score. The
  scores start above the threshold, so the masks start all-ones and the model starts as the zero-shot CLIP. The
  paper selects the multi-head self-attention (MHSA) weights of the image encoder (the ViT-B/16 config masks the
  attention's in- and out-projections, ``MASK_MLP: False``); :func:`image_tower_layers` gives the qkv and output
  projections of every block (``mlp=True`` adds the MLP's two linear layers). Only the scores train (Adam, no
  weight decay); the class text embeddings are the frozen zero-shot ones.
- here the scores are mask logits and the masks come from :func:`companion.masking.weights.gumbel_sigmoid` with
  ``noise=None`` (forward: ``logit > 0``; backward: the sigmoid's slope, a straight-through estimator) applied by
  :func:`companion.masking.weights.weight_masks` — the package's one weight-mask mechanism. The code's estimator
  passes the gradient unchanged; under Adam the two differ only through the slope's drift as logits move.
- **gradient dropout** (:func:`gradient_dropout`, the code's ``graddrop_backward_and_update``): per mask score, the
  gradient ``a`` of the cross-entropy on the downstream labels and the gradient ``b`` of the distillation loss to
  the zero-shot model's predictions (``KLLoss``: cross-entropy to the teacher's softmax at temperature T = 1,
  the KL divergence up to a constant) give a keep probability ``P = (sign(a)·(a + b)/(|a| + |b| + ε) + 1)/2`` —
  1 where the two agree in sign, ``|a|/(|a| + |b|)`` where they conflict; ``a`` is kept where ``P > U``,
  U ~ Uniform(0, 1), and otherwise scaled by ``1 − λ`` (λ = 1 drops it). Only ``a``, possibly dropped, updates
  the scores: ``b`` only votes.

Not reproduced: the code's optional L2 penalty on the scores (``MASK_LOSS``) and its data augmentation.

The comparison arms (the paper's baselines) live here too: zero-shot classification with the class-name text
embeddings, CoOp-style prompt tuning (:class:`PromptLearner`: learned context vectors in the text tower, the
class name first), and — in the notebook — a linear probe on frozen features
(:func:`companion.eval.probes.linear_probe`).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import refer, words
from ...masking.weights import gumbel_sigmoid, weight_masks
from ...train import Objective


def base_new_split() -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The 24 colour × shape classes split in two halves of 12, a checkerboard over (colour, shape): class c is a
    *base* class when ``colour_of(c) + shape_of(c)`` is even. Every colour and every shape occurs in both halves, so
    new classes are new combinations of attributes the base classes also show."""
    base = tuple(c for c in range(len(refer.CLASSES)) if (refer.colour_of(c) + refer.shape_of(c)) % 2 == 0)
    return base, tuple(c for c in range(len(refer.CLASSES)) if c not in base)


def object_images(per_class: int, classes, seed: int, domain: str = "shifted", clutter: tuple[int, int] = (0, 1)):
    """``per_class`` single-object images of each class in ``classes`` (plus 0–1 unnamed clutter items) →
    images (N, 3, 32, 32), labels (N,) class indices, class by class. Class k's images come from
    ``make_refer_scenes`` with seed ``seed * 1000 + k``."""
    images, labels = [], []
    for k in classes:
        s = refer.make_refer_scenes(per_class, seed=seed * 1000 + int(k), objects=(1, 1), clutter=clutter,
                                    classes=(int(k),), domain=domain)
        images.append(s.images)
        labels.append(torch.full((per_class,), int(k), dtype=torch.long))
    return torch.cat(images), torch.cat(labels)


def class_ids(classes) -> torch.Tensor:
    """Class indices → (K, CAPTION_LEN) token ids of their names ("red circle")."""
    return words.encode([refer.CLASSES[int(k)] for k in classes], refer.VOCAB, refer.CAPTION_LEN)


def text_embeddings(clip: nn.Module, classes) -> torch.Tensor:
    """Zero-shot class embeddings (K, D), unit norm: ``clip.classifier`` on the class names."""
    with torch.no_grad():
        return clip.classifier([refer.CLASSES[int(k)] for k in classes])


def image_tower_layers(clip: nn.Module, mlp: bool = False) -> dict[str, nn.Linear]:
    """The masked layers: ``{name: nn.Linear}`` under ``clip.image`` — every block's attention qkv and output
    projections (the paper's MHSA weights); with ``mlp`` also the MLP's ``fc1`` and ``fc2``."""
    names = []
    for i in range(len(clip.image.blocks)):
        names += [f"blocks.{i}.attn.qkv", f"blocks.{i}.attn.proj"]
        if mlp:
            names += [f"blocks.{i}.mlp.fc1", f"blocks.{i}.mlp.fc2"]
    return {n: clip.image.get_submodule(n) for n in names}


class MaskedCLIP(nn.Module):
    """A frozen toy CLIP classifying images among fixed class embeddings, with one trainable mask logit per weight of
    ``layers`` (names under ``clip.image``), all starting at ``init_logit`` > 0 (masks all-ones).

    ``forward(images (N, 3, H, W)) -> (N, K)`` logits ``exp(logit_scale) · <image embedding, class embedding>``
    computed with the masked weights (hard masks ``logit > 0``, straight-through slope of ``sigmoid(logit / tau)``).
    """

    def __init__(self, clip: nn.Module, text: torch.Tensor, layers: dict[str, nn.Linear], init_logit: float = 1.0,
                 tau: float = 1.0):
        super().__init__()
        if init_logit <= 0:
            raise ValueError(f"init_logit must be > 0 so that the masks start all-ones, got {init_logit}")
        self.clip = clip.requires_grad_(False)
        self.register_buffer("text", text)
        self.layers = dict(layers)  # not registered: they are the clip's
        self.logits = nn.ParameterDict({n.replace(".", "_"): nn.Parameter(torch.full_like(m.weight, init_logit))
                                        for n, m in self.layers.items()})
        self.tau = tau

    def masks(self) -> dict[str, torch.Tensor]:
        """{layer name: hard mask shaped like its weight}, straight-through."""
        return {n: gumbel_sigmoid(self.logits[n.replace(".", "_")], self.tau, hard=True, noise=None)
                for n in self.layers}

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) → (N, D) unit-norm image embeddings through the masked image tower."""
        with weight_masks(self.layers, self.masks()):
            return self.clip.encode_image(images)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.embed(images) @ self.text.T * self.clip.logit_scale.exp()

    def masked_share(self) -> dict[str, float]:
        """Share of masked (zeroed) weights per layer, and ``"all"`` over every masked layer."""
        with torch.no_grad():
            off = {n: (self.logits[n.replace(".", "_")] <= 0) for n in self.layers}
        out = {n: m.float().mean().item() for n, m in off.items()}
        out["all"] = sum(m.sum().item() for m in off.values()) / sum(m.numel() for m in off.values())
        return out


def gradient_dropout(a: torch.Tensor, b: torch.Tensor, lam: float = 1.0, generator: torch.Generator | None = None,
                     eps: float = 1e-8) -> torch.Tensor:
    """R-AMT's gradient dropout: the task gradient ``a`` kept per entry with probability
    ``P = (sign(a)(a + b)/(|a| + |b| + eps) + 1)/2`` (``b``: the gradient of the loss to the zero-shot teacher),
    otherwise scaled by ``1 - lam``. Any shape; returns ``((1 - lam) + lam·[P > U])·a``, U ~ Uniform(0, 1)."""
    p = (torch.sign(a) * (a + b) / (a.abs() + b.abs() + eps) + 1) / 2
    u = torch.rand(a.shape, generator=generator, dtype=a.dtype)
    return ((1 - lam) + lam * (p > u).to(a.dtype)) * a


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """The code's ``KLLoss``: cross-entropy of the student's logits (N, K) to the teacher's softmax at ``temperature``,
    times T² (the KL divergence up to the teacher's entropy, the same gradient)."""
    t = F.softmax(teacher / temperature, dim=-1)
    return -(t * F.log_softmax(student / temperature, dim=-1)).sum(1).mean() * temperature**2


class MaskTuning(Objective):
    """``train.fit`` objective for a :class:`MaskedCLIP` whose inputs are the training images and whose targets are
    **item indices** into ``labels`` (N,) (positions among the model's classes) and ``teacher`` (N, K) (the zero-shot
    logits of the same images).

    Plain mask tuning (``gdr=False``): the cross-entropy. R-AMT (``gdr=True``): the gradients of the cross-entropy
    (a) and of :func:`distill_loss` (b) with respect to the mask logits are computed here and combined by
    :func:`gradient_dropout`; the returned loss has the cross-entropy's value and that combined gradient.
    Logs ``ce`` and, with ``gdr``, ``kept`` (the share of kept task-gradient entries where a ≠ 0).
    """

    def __init__(self, labels: torch.Tensor, teacher: torch.Tensor, gdr: bool = False, lam: float = 1.0,
                 temperature: float = 1.0, seed: int = 0):
        self.labels, self.teacher = labels, teacher
        self.gdr, self.lam, self.temperature = gdr, lam, temperature
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: MaskedCLIP, x: torch.Tensor, idx: torch.Tensor) -> dict:
        logits = model(x)
        ce = F.cross_entropy(logits, self.labels[idx])
        if not self.gdr:
            return {"loss": ce, "ce": ce.item()}
        params = list(model.logits.values())
        kl = distill_loss(logits, self.teacher[idx], self.temperature)
        b = torch.autograd.grad(kl, params, retain_graph=True)
        a = torch.autograd.grad(ce, params)
        g = [gradient_dropout(ai, bi, self.lam, self.generator) for ai, bi in zip(a, b)]
        kept = sum(((gi != 0) & (ai != 0)).sum().item() for gi, ai in zip(g, a)) / max(
            1, sum((ai != 0).sum().item() for ai in a))
        surrogate = sum((gi * p).sum() for gi, p in zip(g, params))
        return {"loss": ce.detach() + surrogate - surrogate.detach(), "ce": ce.item(), "kl": kl.item(), "kept": kept}


class PromptLearner(nn.Module):
    """CoOp-style prompt tuning in the frozen text tower: ``n_ctx`` learned context vectors (N(0, 0.02²)) shared by
    all classes, placed after the class name's word embeddings (CoOp's class-token position "front", which keeps
    the name at the positions it had in pre-training); the tower's states are mean-pooled over the name's words and
    the context slots and projected as in ``ToyCLIP.encode_text``.

    ``forward(classes) -> (K, D)`` unit-norm class embeddings of the class indices ``classes``.
    """

    def __init__(self, clip: nn.Module, n_ctx: int = 4, seed: int = 0):
        super().__init__()
        self.clip = clip.requires_grad_(False)
        g = torch.Generator().manual_seed(seed)
        self.ctx = nn.Parameter(torch.randn(n_ctx, clip.text.config.n_embd, generator=g) * 0.02)

    def forward(self, classes) -> torch.Tensor:
        text = self.clip.text
        ids = class_ids(classes).to(self.ctx.device)
        ids = ids[:, :int((ids != words.PAD).sum(1).max())]  # (K, W) the names' words (right-padded)
        n, n_ctx = len(ids), len(self.ctx)
        if ids.shape[1] + n_ctx > text.config.block_size:
            raise ValueError(f"{ids.shape[1]} name words + {n_ctx} context vectors exceed the text tower's "
                             f"{text.config.block_size} positions")
        embeds = torch.cat([text.wte(ids), self.ctx.expand(n, -1, -1)], dim=1)  # (K, W + n_ctx, D)
        keep = torch.cat([ids != words.PAD, torch.ones(n, n_ctx, dtype=torch.bool, device=ids.device)], dim=1)
        states = text(embeds=embeds, hidden=True)
        w = keep.to(states.dtype)[..., None]
        return F.normalize(self.clip.text_proj((states * w).sum(1) / w.sum(1)), dim=-1)


class PromptTuning(Objective):
    """``train.fit`` objective for a :class:`PromptLearner` on cached unit-norm image embeddings (N, D) (inputs) with
    targets the positions (N,) among ``classes``: the cross-entropy of the scaled cosine logits."""

    def __init__(self, classes, logit_scale: torch.Tensor):
        self.classes = tuple(int(c) for c in classes)
        self.scale = logit_scale.detach().exp()

    def __call__(self, model: PromptLearner, feats: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(feats @ model(self.classes).T * self.scale, y)


def correct(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(N, K) logits and (N,) positions → (N,) float 0/1 correctness."""
    return (logits.argmax(1) == labels).float()


def seed_spread_interval(baseline: torch.Tensor, method: torch.Tensor, interval: tuple[float, float]):
    """Widen a bootstrap interval of ``mean(method − baseline)`` (items pooled over seeds) so that it also covers
    every seed's own mean difference: ``baseline``, ``method`` (S, N) per seed and item. A gain that one seed shows
    and another does not is then within the seeds' spread (the interval straddles zero)."""
    per_seed = (method.float() - baseline.float()).mean(1)
    return min(interval[0], per_seed.min().item()), max(interval[1], per_seed.max().item())


def harmonic_mean(base: float, new: float) -> float:
    """The base-to-new protocol's harmonic mean of base and new accuracy."""
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)
