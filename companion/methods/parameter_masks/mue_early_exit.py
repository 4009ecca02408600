"""Dynamic early exiting in an encoder-decoder (MuE, Tang et al., CVPR 2023) and its baselines.

The exit rule of MuE is *saturation*: after layer ``l`` compare the residual stream with the one before the
layer; when their cosine similarity exceeds a threshold the layer changed little, so the remaining layers are
skipped. It needs no classifier, so it works in the **encoder** (which has no output to be confident about)
as well as in the **decoder**, where each generated token exits on its own. The baseline exits only in the
decoder, when the intermediate prediction is confident (max softmax probability, as in DeeBERT/CALM).

Conventions: layers are counted from 1; ``exit layer = k`` means layers 1..k ran and layers k+1.. were
skipped. A threshold of 1.0 never exits early for the similarity rule (cosine similarity never exceeds 1);
for the confidence rule a threshold above 1 never exits. A token that exits at decoder layer ``k`` hands its
layer-``k`` state on to the skipped layers (state propagation): deeper layers of later tokens read keys and
values computed from that copied state.

Accounting: the *expected layers* of one item are its encoder exit layer plus the mean decoder exit layer
over its generated tokens, out of ``n_enc + n_dec``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ...models.gpt import KVCache
from ...models.seq2seq import Seq2Seq


def teacher_forcing_input(target: torch.Tensor, bos: int) -> torch.Tensor:
    """target (N,T) → decoder input (N,T): BOS, then the target shifted right by one."""
    return torch.cat([torch.full_like(target[:, :1], bos), target[:, :-1]], dim=1)


def saturation(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each item's hidden state before and after a layer, flattened over all but the
    first dimension: (N, ...) x2 → (N,)."""
    return F.cosine_similarity(before.flatten(1), after.flatten(1), dim=1)


def first_exit(scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """scores (N, L): a per-layer exit score (similarity or confidence) → (N,) long exit layer in 1..L, the
    first layer whose score exceeds ``threshold`` (the last layer if none does)."""
    over = scores > threshold
    n_layers = scores.shape[1]
    first = over.long().argmax(dim=1) + 1
    return torch.where(over.any(dim=1), first, torch.full_like(first, n_layers))


@torch.no_grad()
def encoder_similarities(model: Seq2Seq, src: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the full encoder once: its ``n_enc + 1`` states (N,S,D) and the saturation of every layer (N, n_enc)."""
    states = model.encode(src)
    sims = torch.stack([saturation(states[i], states[i + 1]) for i in range(len(states) - 1)], dim=1)
    return states, sims


def encoder_exit_memory(model: Seq2Seq, states: list[torch.Tensor], exit_layers: torch.Tensor) -> torch.Tensor:
    """The memory each item would have had if its encoder stopped after ``exit_layers`` (N,) layers.

    Exiting after layer k equals truncating the encoder at k (a layer only reads the layers below it), so the
    state is picked from one full pass: (N,S,D)."""
    stacked = torch.stack(states)  # (n_enc+1, N, S, D)
    return model.memory(stacked[exit_layers, torch.arange(stacked.shape[1])])


@torch.no_grad()
def greedy_decode(model: Seq2Seq, memory: torch.Tensor, steps: int, bos: int, rule: str = "none",
                  threshold: float = 1.0, max_layers: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with per-token early exit in the decoder.

    rule: ``"none"`` (run ``max_layers`` layers, default all), ``"similarity"`` (exit after the first layer
    whose output has cosine similarity > threshold with its input, MuE) or ``"confidence"`` (exit after the
    first layer whose intermediate prediction has max softmax probability > threshold).
    Returns tokens (N, steps) and the decoder exit layer of every token (N, steps), long.
    """
    if rule not in ("none", "similarity", "confidence"):
        raise ValueError(f"rule must be 'none', 'similarity' or 'confidence', got {rule!r}")
    n_layers = model.config.n_dec if max_layers is None else max_layers
    if not 1 <= n_layers <= model.config.n_dec:
        raise ValueError(f"max_layers must be in [1, {model.config.n_dec}], got {max_layers}")
    n = memory.shape[0]
    cache = KVCache(model.config.n_dec)
    token = torch.full((n, 1), bos, dtype=torch.long, device=memory.device)
    tokens, layers = [], []
    for t in range(steps):
        x = model.embed_tgt(token, start=t)  # (N,1,D)
        done = torch.zeros(n, dtype=torch.bool, device=memory.device)
        used = torch.full((n,), n_layers, dtype=torch.long, device=memory.device)
        for i in range(n_layers):
            # exited tokens still pass through the layer so that its cache holds keys/values of their copied
            # state; their output is discarded
            y = model.decoder[i](x, memory, cache)
            if rule == "similarity":
                stop = saturation(x, y) > threshold
            elif rule == "confidence":
                stop = model.logits(y[:, -1]).softmax(-1).amax(-1) > threshold
            else:
                stop = torch.zeros_like(done)
            x = torch.where(done[:, None, None], x, y)
            newly = stop & ~done
            used = torch.where(newly, torch.full_like(used, i + 1), used)
            done = done | stop
        cache.length += 1
        token = model.logits(x[:, -1]).argmax(-1, keepdim=True)
        tokens.append(token)
        layers.append(used)
    return torch.cat(tokens, dim=1), torch.stack(layers, dim=1)


def expected_layers(enc_layers: torch.Tensor, dec_layers: torch.Tensor) -> torch.Tensor:
    """Per-item layer count: encoder exit layer (N,) + mean decoder exit layer over tokens (N,T) → (N,) float."""
    return enc_layers.float() + dec_layers.float().mean(dim=1)


def layerwise_loss(model: Seq2Seq, src: torch.Tensor, target: torch.Tensor, bos: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Layer-wise task loss that makes every exit usable (MuE section 3.3, simplified).

    The decoder runs twice in one batch: on the full encoder's memory and on the memory of a random encoder
    depth per item (1..n_enc), so every encoder layer learns to be a usable memory; every decoder layer's
    output goes through the shared head and all ``n_dec`` cross-entropies are averaged.
    """
    n = src.shape[0]
    states = model.encode(src)
    depth = torch.randint(1, model.config.n_enc + 1, (n,), generator=generator).to(src.device)
    stacked = torch.stack(states)
    memory = model.memory(torch.cat([states[-1], stacked[depth, torch.arange(n, device=src.device)]]))
    tgt_in = teacher_forcing_input(target, bos).repeat(2, 1)
    dec_states = model.decode(tgt_in, memory)
    labels = target.repeat(2, 1).flatten()
    losses = [F.cross_entropy(model.logits(h).flatten(0, 1), labels) for h in dec_states[1:]]
    return torch.stack(losses).mean()


def final_loss(model: Seq2Seq, src: torch.Tensor, target: torch.Tensor, bos: int) -> torch.Tensor:
    """Plain training: cross-entropy of the full model's output only."""
    logits = model(src, teacher_forcing_input(target, bos))
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def operating_point(quality, layers, min_quality: float) -> int | None:
    """Index of the configuration with the fewest expected layers among those with ``quality >= min_quality``
    (ties: the higher quality, then the lower index); None if no configuration reaches it."""
    best = None
    for i, (q, c) in enumerate(zip(quality, layers)):
        if q >= min_quality and (best is None or (c, -q) < (layers[best], -quality[best])):
            best = i
    return best


def pareto_front(quality, layers) -> list[int]:
    """Indices of the configurations no other one beats on both fewer layers and higher quality, sorted by
    layers (for plotting a trade-off curve)."""
    order = sorted(range(len(layers)), key=lambda i: (layers[i], -quality[i]))
    front, best_q = [], float("-inf")
    for i in order:
        if quality[i] > best_q:
            front.append(i)
            best_q = quality[i]
    return front


@torch.no_grad()
def evaluate(model: Seq2Seq, src: torch.Tensor, target: torch.Tensor, bos: int, enc_layers: torch.Tensor,
             states: list[torch.Tensor], dec_rule: str = "none", dec_threshold: float = 1.0,
             dec_max_layers: int | None = None) -> dict[str, torch.Tensor]:
    """Decode with given encoder exit layers (N,) and a decoder exit rule; per-item results:
    ``accuracy`` (share of answer tokens right), ``exact`` (whole answer right), ``enc_layers`` (N,),
    ``dec_layers`` (N,T) and ``layers`` (N,) expected layers."""
    memory = encoder_exit_memory(model, states, enc_layers)
    tokens, dec_layers = greedy_decode(model, memory, target.shape[1], bos, dec_rule, dec_threshold, dec_max_layers)
    right = (tokens == target).float()
    return {"accuracy": right.mean(1), "exact": right.min(1).values, "enc_layers": enc_layers,
            "dec_layers": dec_layers, "layers": expected_layers(enc_layers, dec_layers)}


@torch.no_grad()
def evaluate_mue(model: Seq2Seq, src: torch.Tensor, target: torch.Tensor, bos: int, enc_threshold: float,
                 dec_threshold: float) -> dict[str, torch.Tensor]:
    """MuE at one setting: similarity exit in the encoder (per item) and in the decoder (per token); the
    per-item results of :func:`evaluate`."""
    states, sims = encoder_similarities(model, src)
    return evaluate(model, src, target, bos, first_exit(sims, enc_threshold), states, "similarity", dec_threshold)


@torch.no_grad()
def sweep(model: Seq2Seq, src: torch.Tensor, target: torch.Tensor, bos: int, enc_thresholds, dec_thresholds,
          conf_thresholds) -> dict[str, list[dict]]:
    """The quality/compute trade-off of five arms on one set, over their thresholds.

    - ``MuE``: similarity exit in the encoder (per item) and in the decoder (per token), every pair of
      ``enc_thresholds`` x ``dec_thresholds``;
    - ``decoder-only similarity``: the full encoder, similarity exit in the decoder (``dec_thresholds``);
    - ``decoder-only confidence``: the full encoder, max-softmax exit in the decoder (``conf_thresholds``);
    - ``static encoder + decoder exits``: the encoder truncated at the same fixed depth k for every item (every
      k in 1..n_enc), similarity exit in the decoder as in MuE (``dec_thresholds``) — MuE without its
      input-dependent encoder exit;
    - ``static``: every fixed (encoder, decoder) depth, no dynamic exit.

    Returns ``{arm: [point, ...]}``, each point a dict with ``config`` (a label), ``setting`` (its thresholds
    or depths: ``enc`` and ``dec``, or ``conf``), ``quality`` (mean token accuracy), ``layers`` (mean expected
    layers) and ``items`` (the per-item results of :func:`evaluate`).
    """
    states, sims = encoder_similarities(model, src)
    n_enc, n_dec = model.config.n_enc, model.config.n_dec
    full_enc = torch.full((len(src),), n_enc, dtype=torch.long)

    def point(config, items, **setting):
        return {"config": config, "setting": setting, "quality": items["accuracy"].mean().item(),
                "layers": items["layers"].mean().item(), "items": items}

    out = {"MuE": [], "decoder-only similarity": [], "decoder-only confidence": [],
           "static encoder + decoder exits": [], "static": []}
    for te in enc_thresholds:
        enc = first_exit(sims, te)
        for td in dec_thresholds:
            out["MuE"].append(point(f"enc {te:g}, dec {td:g}",
                                    evaluate(model, src, target, bos, enc, states, "similarity", td), enc=te, dec=td))
    for td in dec_thresholds:
        out["decoder-only similarity"].append(point(f"dec {td:g}", evaluate(
            model, src, target, bos, full_enc, states, "similarity", td), dec=td))
    for tc in conf_thresholds:
        out["decoder-only confidence"].append(point(f"conf {tc:g}", evaluate(
            model, src, target, bos, full_enc, states, "confidence", tc), conf=tc))
    for k in range(1, n_enc + 1):
        depth = torch.full((len(src),), k, dtype=torch.long)
        for td in dec_thresholds:
            out["static encoder + decoder exits"].append(point(f"enc {k}, dec {td:g}", evaluate(
                model, src, target, bos, depth, states, "similarity", td), enc=k, dec=td))
    for k in range(1, n_enc + 1):
        for j in range(1, n_dec + 1):
            out["static"].append(point(f"enc {k}, dec {j}", evaluate(
                model, src, target, bos, torch.full((len(src),), k, dtype=torch.long), states, "none",
                dec_max_layers=j), enc=k, dec=j))
    return out
