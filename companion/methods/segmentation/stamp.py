"""STAMP (Liu, Feng & Chen, CVPR 2026) at toy scale: after the text answer, a multimodal LLM predicts a label for
every image patch in **one** forward pass — 64 ``[MASK]`` tokens that attend to the whole prefix and to each
other — against autoregressive patch-label decoding (Text4Seg-style: one ``<bg>``/``<fg>`` word per patch,
generated one at a time with a KV cache, 64 passes).

Both paradigms run on the package's :class:`~companion.models.mllm.ToyMLLM` (the GPT, built bidirectional so
that the attention hook alone decides who sees whom) over one sequence layout::

    [image tokens (Li)] [text (T words, padded)] [answer (1 word)] [64 patch slots]

- image tokens: frozen toy-CLIP dense features pooled to a small grid (``image_tokens``);
- text: a referring expression (segmentation) or a question (the toy QA task, the dialogue proxy);
- answer: ``<seg>`` after an expression, a number / ``yes`` / ``no`` after a question;
- patch slots: STAMP's ``[MASK]`` tokens (a learned vector plus the patch's own projected CLIP feature, as the
  official code adds the image embeddings to its mask tokens) read by a linear patch classifier; or, for the
  autoregressive baseline, the previous patch's label word plus the same patch feature (teacher-forced in
  training, the model's own choice at test time).

Attention (:func:`stamp_attention`): the prefix is causal; the mask tokens see everything (the prefix and each
other); text never sees mask tokens. Losses follow the official trainer: next-word cross-entropy on the answer
plus, for STAMP, 0.3·BCE + 0.7·Dice per mask; the autoregressive baseline's labels are words, so it is
cross-entropy throughout.

Shapes: image tokens (N, Li, C); patch features (N, 64, C) on the 8×8 grid, row-major; text (N, T) ids of
:data:`VOCAB`; answers (N,) ids; patch labels (N, 64) bool.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ...data import refer, words
from ...masks.attention import causal_mask
from ...models.layers import KVCache
from ...models.mllm import ToyMLLM, image_tokens

NUMBERS = ("zero", "one", "two", "three", "four", "five", "six")
SEG, BG, FG = "<seg>", "<bg>", "<fg>"
VOCAB = refer.VOCAB + ("how", "many", "is", "there", "a", *NUMBERS, "yes", "no", SEG, BG, FG)
TEXT_LEN = refer.EXPR_LEN  # "circle left of red square" and "is there a red circle" are 5 words
QUESTION_KINDS = ("count", "exists")


def patch_labels(targets: torch.Tensor, grid: int = 8, threshold: float = 0.25) -> torch.Tensor:
    """(N, H, W) bool pixel masks → (N, grid²) bool patch labels, row-major: a patch is foreground when at least
    ``threshold`` of its pixels are."""
    share = F.adaptive_avg_pool2d(targets[:, None].float(), grid)[:, 0]
    return (share >= threshold).flatten(1)


def expressions_as_text(expr_ids: torch.Tensor) -> torch.Tensor:
    """Referring-expression ids in ``refer.VOCAB`` (N, EXPR_LEN) → the same words as ids of :data:`VOCAB`
    (``refer.VOCAB`` is a prefix of it), padded to :data:`TEXT_LEN`."""
    return F.pad(expr_ids, (0, TEXT_LEN - expr_ids.shape[1]))


def questions(scenes: refer.ReferScenes, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One toy-QA question per scene → (text (N, TEXT_LEN) ids, answers (N,) ids, kind (N,) index into
    :data:`QUESTION_KINDS`).

    ``count``: "how many <colour>" or "how many <shape>" → the number of named objects of that colour or shape
    (a colour or shape drawn from the scene's objects half of the time, else from all); ``exists``: "is there a
    <colour> <shape>" → ``yes`` / ``no`` (a class present in the scene half of the time, else an absent one).
    Clutter never counts."""
    rng = np.random.default_rng(seed)
    labels = scenes.labels.numpy()
    colours, shapes = list(refer.COLOURS), list(refer.SHAPES)
    texts, answers, kinds = [], [], []
    for lab in labels:
        named = lab[lab >= 0]
        kind = QUESTION_KINDS[rng.integers(2)]
        if kind == "count":
            by_colour = rng.random() < 0.5
            values = refer.colour_of(named) if by_colour else refer.shape_of(named)
            pool = len(colours) if by_colour else len(shapes)
            v = int(values[rng.integers(len(values))]) if rng.random() < 0.5 else int(rng.integers(pool))
            texts.append(f"how many {(colours if by_colour else shapes)[v]}")
            answers.append(NUMBERS[int((values == v).sum())])
        else:
            present = sorted(set(named.tolist()))
            absent = sorted(set(range(len(refer.CLASSES))) - set(present))
            yes = rng.random() < 0.5 or not absent
            c = present[rng.integers(len(present))] if yes else absent[rng.integers(len(absent))]
            texts.append(f"is there a {refer.CLASSES[c]}")
            answers.append("yes" if yes else "no")
        kinds.append(QUESTION_KINDS.index(kind))
    return (words.encode(texts, VOCAB, TEXT_LEN), torch.tensor([VOCAB.index(a) for a in answers]),
            torch.tensor(kinds))


def stamp_attention(prefix_len: int, n_mask: int):
    """STAMP's hybrid attention as an ``attn_bias_fn``: over ``prefix_len + n_mask`` positions, prefix queries
    are causal (text never sees the mask tokens, which come after it) and the ``n_mask`` mask-token queries
    attend every position (the prefix and each other). Returns ``fn(layer_idx, q_len, k_len) -> (q_len, k_len)``
    bool, True = may attend (queries are the last ``q_len`` of ``k_len`` positions, as with a KV cache)."""
    total = prefix_len + n_mask

    def fn(layer_idx: int, q_len: int, k_len: int) -> torch.Tensor:
        if k_len > total:
            raise ValueError(f"{k_len} keys, but the sequence has only {total} positions")
        allowed = causal_mask(q_len, k_len)
        rows = torch.arange(k_len - q_len, k_len)
        return allowed | (rows >= prefix_len)[:, None]

    return fn


def causal_attention(layer_idx: int, q_len: int, k_len: int) -> torch.Tensor:
    """Plain causal attention as an ``attn_bias_fn`` (for the bidirectionally built GPT)."""
    return causal_mask(q_len, k_len)


class Grounder(nn.Module):
    """A :class:`ToyMLLM` with STAMP's ``[MASK]`` embedding and patch classifier (Linear dim → 1).

    The autoregressive baseline uses the same module and ignores those two (65 + 64 parameters)."""

    def __init__(self, image_dim: int = 64, image_len: int = 16, n_patches: int = 64, n_layer: int = 2,
                 n_head: int = 4, dim: int = 64):
        super().__init__()
        self.image_len, self.n_patches = image_len, n_patches
        self.prefix_len = image_len + TEXT_LEN + 1
        self.mllm = ToyMLLM(VOCAB, image_dim, max_len=self.prefix_len + n_patches, n_layer=n_layer, n_head=n_head,
                            dim=dim, causal=False)
        self.mask_embed = nn.Parameter(torch.randn(dim) * 0.02)
        self.patch_head = nn.Linear(dim, 1)

    def prefix(self, image: torch.Tensor, text: torch.Tensor, answer: torch.Tensor | None) -> torch.Tensor:
        """(N, Li, C), (N, T), (N,) or None → the input vectors (N, Li + T [+ 1], dim)."""
        ids = text if answer is None else torch.cat([text, answer[:, None]], dim=1)
        return self.mllm.embed(image, ids)

    def answer_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(N, L, dim) states → (N, V) next-word logits at the last text position (what follows the text)."""
        return self.mllm.logits(hidden[:, self.image_len + TEXT_LEN - 1])


def qa_logits(model: Grounder, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Toy QA: (N, V) logits of the answer word after [image, question] (one causal pass)."""
    return model.answer_logits(model.mllm(model.prefix(image, text, None), attn_bias_fn=causal_attention))


def stamp_forward(model: Grounder, image: torch.Tensor, patches: torch.Tensor,
                  text: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """STAMP's one pass over [image, expression, ``<seg>``, 64 ``[MASK]``] → (answer logits (N, V), mask logits
    (N, 64)). Mask token k is the ``[MASK]`` vector plus patch k's projected feature."""
    seg = torch.full((len(text),), VOCAB.index(SEG), dtype=torch.long, device=text.device)
    masks = model.mask_embed + model.mllm.image_proj(patches)  # (N, 64, dim)
    embeds = torch.cat([model.prefix(image, text, seg), masks], dim=1)
    hidden = model.mllm(embeds, attn_bias_fn=stamp_attention(model.prefix_len, patches.shape[1]))
    return model.answer_logits(hidden), model.patch_head(hidden[:, model.prefix_len:])[..., 0]


def ar_forward(model: Grounder, image: torch.Tensor, patches: torch.Tensor, text: torch.Tensor,
               labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The autoregressive baseline, teacher-forced: [image, expression, ``<seg>``, label words of patches
    0..62], causal → (answer logits (N, V), label logits (N, 64, V)). The input that predicts patch k's label
    (``<seg>`` for k = 0, else patch k-1's label word) carries patch k's projected feature."""
    n = len(text)
    seg = torch.full((n,), VOCAB.index(SEG), dtype=torch.long, device=text.device)
    prev = label_words(labels[:, :-1])  # (N, 63)
    embeds = torch.cat([model.prefix(image, text, seg), model.mllm.gpt.wte(prev)], dim=1)
    start = model.prefix_len - 1
    feats = F.pad(model.mllm.image_proj(patches), (0, 0, start, 0))  # (N, start + 64, dim): patch k at start + k
    hidden = model.mllm(embeds + feats, attn_bias_fn=causal_attention)
    return model.answer_logits(hidden), model.mllm.logits(hidden[:, start:])


def label_words(labels: torch.Tensor) -> torch.Tensor:
    """(N, K) bool patch labels → (N, K) ids of ``<fg>`` / ``<bg>``."""
    return torch.where(labels, VOCAB.index(FG), VOCAB.index(BG))


def dice_bce(logits: torch.Tensor, labels: torch.Tensor, bce: float = 0.3, dice: float = 0.7) -> torch.Tensor:
    """The official trainer's mask loss, per mask and averaged: ``bce``·BCE + ``dice``·(1 − soft Dice, smooth 1).
    logits (N, K), labels (N, K) bool → scalar."""
    p, y = torch.sigmoid(logits), labels.float()
    d = 1 - (2 * (p * y).sum(1) + 1) / (p.sum(1) + y.sum(1) + 1)
    b = F.binary_cross_entropy_with_logits(logits, y, reduction="none").mean(1)
    return (bce * b + dice * d).mean()


@dataclass
class Episodes:
    """Training or test data, aligned per scene: the scene's expression (segmentation) and its question (QA)."""

    image: torch.Tensor  # (N, Li, C) pooled frozen CLIP tokens
    patches: torch.Tensor  # (N, 64, C) frozen CLIP features per patch
    expr: torch.Tensor  # (N, T) expression ids (VOCAB)
    labels: torch.Tensor  # (N, 64) bool patch labels of the expression's target
    question: torch.Tensor  # (N, T) question ids
    answer: torch.Tensor  # (N,) answer ids

    def __len__(self) -> int:
        return len(self.image)


def loss_fn(mode: str, data: Episodes):
    """``train.fit``'s loss over minibatches of scene indices (inputs = ``torch.arange(len(data))``).

    ``mode``: ``"qa"`` — the answer's cross-entropy on the scenes' questions only (the QA-only model);
    ``"stamp"`` — that plus, on the same scenes' expressions, the cross-entropy of ``<seg>`` and the Dice+BCE
    mask loss of the one-pass prediction; ``"ar"`` — the QA loss plus the cross-entropy of ``<seg>`` and of the
    64 teacher-forced label words. Returns ``fn(model, idx, _) -> {"loss", "qa", "seg"}``."""
    if mode not in ("qa", "stamp", "ar"):
        raise ValueError(f"mode must be 'qa', 'stamp' or 'ar', not {mode!r}")
    seg_id = VOCAB.index(SEG)

    def fn(model: Grounder, idx: torch.Tensor, _):
        image = data.image[idx]
        qa = F.cross_entropy(qa_logits(model, image, data.question[idx]), data.answer[idx])
        if mode == "qa":
            return {"loss": qa, "qa": qa.detach(), "seg": torch.zeros(())}
        target = torch.full((len(idx),), seg_id, dtype=torch.long)
        labels = data.labels[idx]
        if mode == "stamp":
            ans, mask = stamp_forward(model, image, data.patches[idx], data.expr[idx])
            seg = F.cross_entropy(ans, target) + dice_bce(mask, labels)
        else:
            ans, label_logits = ar_forward(model, image, data.patches[idx], data.expr[idx], labels)
            seg = F.cross_entropy(ans, target) + F.cross_entropy(label_logits.flatten(0, 1),
                                                                   label_words(labels).flatten())
        return {"loss": qa + seg, "qa": qa.detach(), "seg": seg.detach()}

    return fn


@torch.no_grad()
def stamp_decode(model: Grounder, image: torch.Tensor, patches: torch.Tensor,
                 text: torch.Tensor) -> tuple[torch.Tensor, int]:
    """All-mask prediction: (N, 64) bool patch mask (logit > 0) and the number of forward passes (1)."""
    return stamp_forward(model, image, patches, text)[1] > 0, 1


@torch.no_grad()
def ar_decode(model: Grounder, image: torch.Tensor, patches: torch.Tensor,
              text: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Greedy autoregressive patch-label decoding with the GPT's ``KVCache``: the prefix pass gives patch 0's
    label, then one single-position pass per further patch (its input: the previous label word plus this patch's
    feature). Each step chooses between ``<bg>`` and ``<fg>`` only. → ((N, 64) bool mask, forward passes = 64)."""
    n, k = patches.shape[:2]
    seg = torch.full((n,), VOCAB.index(SEG), dtype=torch.long, device=text.device)
    feats = model.mllm.image_proj(patches)
    x = model.prefix(image, text, seg)
    x = torch.cat([x[:, :-1], x[:, -1:] + feats[:, :1]], dim=1)
    cache = KVCache(model.mllm.gpt.config.n_layer)
    choice = torch.tensor([VOCAB.index(BG), VOCAB.index(FG)], device=text.device)
    out, passes = [], 0
    for step in range(k):
        hidden = model.mllm(x, attn_bias_fn=causal_attention, cache=cache)
        passes += 1
        fg = model.mllm.logits(hidden[:, -1])[:, choice].argmax(-1).bool()  # (N,)
        out.append(fg)
        if step + 1 < k:
            x = (model.mllm.gpt.wte(label_words(fg[:, None])) + feats[:, step + 1:step + 2])
    return torch.stack(out, dim=1), passes


@torch.no_grad()
def batched(fn, model: Grounder, data: Episodes, batch_size: int = 256) -> tuple[torch.Tensor, int]:
    """Run a decoder over ``data``'s expressions in batches → ((N, 64) bool masks, passes per batch)."""
    outs, passes = [], 0
    for i in range(0, len(data), batch_size):
        sl = slice(i, i + batch_size)
        mask, passes = fn(model, data.image[sl], data.patches[sl], data.expr[sl])
        outs.append(mask)
    return torch.cat(outs), passes


@torch.no_grad()
def qa_correct(model: Grounder, data: Episodes, batch_size: int = 512) -> torch.Tensor:
    """(N,) float: 1 where the greedy answer word (over the whole vocabulary) is right."""
    out = []
    for i in range(0, len(data), batch_size):
        sl = slice(i, i + batch_size)
        out.append(qa_logits(model, data.image[sl], data.question[sl]).argmax(-1) == data.answer[sl])
    return torch.cat(out).float()


@torch.no_grad()
def episodes(clip, scenes: refer.ReferScenes, exprs: refer.Expressions, question_seed: int, image_grid: int = 4,
             threshold: float = 0.25, stats: tuple[torch.Tensor, torch.Tensor] | None = None,
             batch_size: int = 256) -> Episodes:
    """Frozen toy-CLIP features (computed once, no gradients) and the texts of each scene: its referring
    expression with the target's patch labels (on CLIP's own patch grid) and one toy-QA question. ``stats``
    (mean, std), each (C,), standardise the features per channel (see :func:`feature_stats`)."""
    dense = torch.cat([clip.dense_features(scenes.images[i:i + batch_size])
                       for i in range(0, len(scenes), batch_size)])  # (N, C, g, g)
    question, answer, _ = questions(scenes, question_seed)
    if stats is not None:  # per-channel standardisation (the training set's mean and std)
        dense = (dense - stats[0][:, None, None]) / stats[1][:, None, None]
    return Episodes(image_tokens(dense, image_grid), dense.flatten(2).transpose(1, 2),
                    expressions_as_text(exprs.text), patch_labels(exprs.targets, dense.shape[-1], threshold),
                    question, answer)


@torch.no_grad()
def feature_stats(clip, images: torch.Tensor, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (C,) of the frozen dense features over ``images``' patches: toy-CLIP's patch
    tokens share a large common component (their spread across patches is a few % of their norm)."""
    dense = torch.cat([clip.dense_features(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return dense.mean((0, 2, 3)), dense.std((0, 2, 3))
