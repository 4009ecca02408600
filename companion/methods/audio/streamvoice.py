"""StreamVoice (Wang et al., ACL 2024): a streaming, fully causal LM for zero-shot voice conversion, on a toy world.

The paper converts source speech to a target voice with a decoder-only LM over **alternating** semantic and
acoustic tokens: at step t it reads the source's semantic frame s_t (bottleneck features of a streaming ASR),
then predicts the codec frame a_t of the target voice from the hidden state at s_t with a *temporal-independent*
predictor (one head per codebook, no model across codebooks), conditioned on a prompt of the target speaker.
A non-streaming LM-VC reads the whole source first. Two training-only fixes recover what the streaming model
loses by not seeing the future:

- **semantic masking**: some source semantic inputs are replaced by a mask token, so a_t must also be predicted
  from preceding, corrupted semantic and acoustic context;
- **teacher-guided context foresight**: a non-streaming teacher summarises the present and future semantics,
  c_t, and the LM's hidden state regresses c_t through a small projection (L2 loss).

The toy world (:func:`unit_chains`, :class:`SpeechWorld`): content units follow a Markov chain, each lasting
``min_dur``–``max_dur`` frames; a frame's speaker-independent content depends on the current unit, the previous
one and, increasingly towards the end of a segment, on the **next** unit (coarticulation) — the future a
streaming model lacks. A speaker is a "timbre map": a linear map of the content plus a bias, a point in a small
space spanned by random orthogonal bases (unseen speakers are new points). Frames are coded by residual k-means
(``companion.audio.ResidualKMeans``), the toy codec.

Sequences (:class:`AlternatingLM`, on the package's GPT through ``embeds=`` / ``hidden=True``), with a prompt of
P (unit, frame) pairs of the target speaker from another utterance:

- streaming (B, E): ``[u'_1 a'_1 … u'_P a'_P  u_1 a_1 u_2 a_2 … u_T a_T]``, a_t predicted at u_t's slot;
- non-streaming (A): ``[u'_1 a'_1 … u'_P a'_P  u_1 … u_T  a_1 … a_T]``, a_t predicted at the slot before it.

Both layouts have the same length, so A, B and E cost the same per step (E adds a tiny projection and the frozen
teacher's forward pass). Tensors: units (N, T) long, frames (N, T, C) float, codes (N, T, L) long.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ...models.gpt import GPT, GPTConfig
from ...train import Objective

# ---------------------------------------------------------------------------------------------------------------
# the toy world: unit chains and speaker timbre maps


def transitions(n_units: int, successors: int, generator: torch.Generator) -> torch.Tensor:
    """(U, U) Markov transition matrix: each unit goes to ``successors`` other units (random choice, random
    probabilities from a flat Dirichlet), never to itself. Fewer successors = a more predictable future."""
    if not 1 <= successors < n_units:
        raise ValueError(f"successors must be in [1, {n_units - 1}], got {successors}")
    probs = torch.zeros(n_units, n_units)
    for u in range(n_units):
        others = torch.tensor([v for v in range(n_units) if v != u])
        pick = others[torch.randperm(n_units - 1, generator=generator)[:successors]]
        w = -torch.log(torch.rand(successors, generator=generator).clamp_min(1e-6))  # Dirichlet(1, …, 1)
        probs[u, pick] = w / w.sum()
    return probs


@dataclass
class Chains:
    """Frame-level unit chains: ``units`` (N, T) the unit of each frame; ``prev`` / ``next`` (N, T) the units of
    the segments before and after (−1 before the first segment); ``to_boundary`` (N, T) frames until the next
    unit starts (1 on a segment's last frame); ``position`` (N, T) frames since the segment started (0 first)."""

    units: torch.Tensor
    prev: torch.Tensor
    next: torch.Tensor
    to_boundary: torch.Tensor
    position: torch.Tensor


def unit_chains(n: int, frames: int, probs: torch.Tensor, generator: torch.Generator, min_dur: int = 2,
                max_dur: int = 5) -> Chains:
    """``n`` chains of ``frames`` frames: units from the Markov chain ``probs`` (U, U), a uniform first unit, and
    durations uniform in [``min_dur``, ``max_dur``] frames; the chain runs past the end so every frame has a
    next unit."""
    n_units = probs.shape[0]
    n_seg = frames // min_dur + 2
    seg = torch.empty(n, n_seg, dtype=torch.long)
    seg[:, 0] = torch.randint(0, n_units, (n,), generator=generator)
    for j in range(1, n_seg):
        seg[:, j] = torch.multinomial(probs[seg[:, j - 1]], 1, generator=generator)[:, 0]
    dur = torch.randint(min_dur, max_dur + 1, (n, n_seg), generator=generator)
    ends = dur.cumsum(1)  # (N, S) exclusive end frame of each segment
    t = torch.arange(frames)
    k = (t[None, :, None] >= ends[:, None, :]).sum(-1)  # (N, T) segment index of each frame
    starts = ends - dur
    prev_seg = torch.cat([torch.full((n, 1), -1), seg[:, :-1]], 1)
    return Chains(units=seg.gather(1, k), prev=prev_seg.gather(1, k), next=seg.gather(1, k + 1),
                  to_boundary=ends.gather(1, k) - t, position=t - starts.gather(1, k))


class SpeechWorld:
    """Fixed random content and timbre maps (all from ``generator``).

    content: g_t = tanh(E[u_t] + c_prev · δ^q_t · E'[u_{t-}] + c_next · δ^(r_t − 1) · E''[u_{t+}]) with q_t the
    frames since the segment started (0 on its first frame), r_t the frames to the next boundary (1 on its last
    frame) and δ = ``decay``: the previous unit weighs fully on a segment's first frame, the next unit on its
    last, fading by δ per frame inwards (carry-over and anticipatory coarticulation). A speaker α (K,) has the
    map W(α) = Q_0 + Σ_k α_k Q_k (Q random orthogonal C×C) and the bias Σ_k α_k b_k; a frame is
    W(α) g_t + bias + noise.
    """

    def __init__(self, n_units: int, dim: int, basis: int, generator: torch.Generator, c_prev: float = 1.0,
                 c_next: float = 1.0, decay: float = 0.5, speaker_scale: float = 0.7):
        self.n_units, self.dim, self.basis = n_units, dim, basis
        self.c_prev, self.c_next, self.decay, self.speaker_scale = c_prev, c_next, decay, speaker_scale
        self.emb = torch.randn(3, n_units + 1, dim, generator=generator)  # current, previous, next; row U = none
        self.emb[:, n_units] = 0.0
        q, _ = torch.linalg.qr(torch.randn(basis + 1, dim, dim, generator=generator))
        self.maps = q  # (K+1, C, C)
        self.biases = torch.randn(basis, dim, generator=generator) * 0.5

    def speakers(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """(n, K) speaker coordinates α ~ N(0, speaker_scale²)."""
        return torch.randn(n, self.basis, generator=generator) * self.speaker_scale

    def content(self, chains: Chains) -> torch.Tensor:
        """(N, T, C) speaker-independent content of each frame."""
        prev = torch.where(chains.prev < 0, self.n_units, chains.prev)
        near = self.decay ** (chains.to_boundary.float() - 1)  # (N, T) weight of the next unit
        after = self.decay ** chains.position.float()  # (N, T) weight of the previous unit
        z = (self.emb[0][chains.units] + self.c_prev * after[..., None] * self.emb[1][prev]
             + self.c_next * near[..., None] * self.emb[2][chains.next])
        return torch.tanh(z)

    def frames(self, chains: Chains, alpha: torch.Tensor, generator: torch.Generator,
               noise: float = 0.05) -> torch.Tensor:
        """(N, T, C) acoustic frames of ``chains`` spoken by speakers ``alpha`` (N, K)."""
        w = self.maps[0] + torch.einsum("nk,kij->nij", alpha, self.maps[1:])  # (N, C, C)
        bias = alpha @ self.biases  # (N, C)
        x = torch.einsum("nij,ntj->nti", w, self.content(chains)) + bias[:, None]
        return x + noise * torch.randn(x.shape, generator=generator)


@dataclass
class Split:
    """One split of conversion examples: the source chain spoken by a speaker, and a prompt (another chain of
    the same speaker). ``speaker`` (N,) indexes ``alpha`` (S, K)."""

    chains: Chains
    frames: torch.Tensor  # (N, T, C)
    prompt_units: torch.Tensor  # (N, P)
    prompt_frames: torch.Tensor  # (N, P, C)
    speaker: torch.Tensor  # (N,)
    alpha: torch.Tensor  # (S, K)

    def __len__(self) -> int:
        return len(self.speaker)


def make_split(world: SpeechWorld, probs: torch.Tensor, alpha: torch.Tensor, per_speaker: int, frames: int,
               prompt_frames: int, generator: torch.Generator, noise: float = 0.05, min_dur: int = 2,
               max_dur: int = 5) -> Split:
    """``per_speaker`` utterances for each speaker of ``alpha`` (S, K), with prompts from separate chains."""
    speaker = torch.arange(len(alpha)).repeat_interleave(per_speaker)
    n = len(speaker)
    src = unit_chains(n, frames, probs, generator, min_dur, max_dur)
    prm = unit_chains(n, prompt_frames, probs, generator, min_dur, max_dur)
    a = alpha[speaker]
    return Split(chains=src, frames=world.frames(src, a, generator, noise), prompt_units=prm.units,
                 prompt_frames=world.frames(prm, a, generator, noise), speaker=speaker, alpha=alpha)


def pack(split: Split, codec) -> torch.Tensor:
    """(N, P + P·L + T + T·L) long: prompt units, prompt codes, source units, target codes (``codec.encode``
    of the frames, L levels), flattened into one tensor so ``train.fit`` can draw minibatches of it."""
    pc, tc = codec.encode(split.prompt_frames), codec.encode(split.frames)  # (N, P, L), (N, T, L)
    n = len(split)
    return torch.cat([split.prompt_units, pc.reshape(n, -1), split.chains.units, tc.reshape(n, -1)], 1)


def unpack(batch: torch.Tensor, prompt_frames: int, frames: int, levels: int):
    """Inverse of :func:`pack`: (prompt units (N,P), prompt codes (N,P,L), units (N,T), codes (N,T,L))."""
    p, t, lv = prompt_frames, frames, levels
    n = batch.shape[0]
    pu = batch[:, :p]
    pc = batch[:, p:p + p * lv].reshape(n, p, lv)
    u = batch[:, p + p * lv:p + p * lv + t]
    c = batch[:, p + p * lv + t:].reshape(n, t, lv)
    return pu, pc, u, c


# ---------------------------------------------------------------------------------------------------------------
# models


class AlternatingLM(nn.Module):
    """The VC language model on the package's causal GPT: unit and codec-frame embeddings laid out streaming
    (alternating) or non-streaming (whole source first), and a temporal-independent acoustic predictor — one
    linear head per codebook on the hidden state that predicts a_t. ``foresight_dim`` > 0 adds the projection
    that regresses the teacher's context summary (E).

    ``forward(batch) -> (logits (N, T, L, K), hidden (N, T, d))``; ``batch`` as :func:`pack` makes it,
    ``unit_keep`` (N, T) bool (False = source unit replaced by the mask token).
    """

    def __init__(self, n_units: int, codebook: int, levels: int, prompt_frames: int, frames: int,
                 streaming: bool, d: int = 64, n_layer: int = 2, n_head: int = 4, foresight_dim: int = 0):
        super().__init__()
        self.n_units, self.codebook, self.levels = n_units, codebook, levels
        self.prompt_frames, self.frames, self.streaming = prompt_frames, frames, streaming
        self.unit_emb = nn.Embedding(n_units + 1, d)  # row n_units = the mask token
        self.code_emb = nn.Embedding(levels * codebook, d)  # one table per level (offsets), summed over levels
        self.kind_emb = nn.Embedding(4, d)  # prompt unit, prompt frame, source unit, target frame
        self.time_emb = nn.Embedding(max(prompt_frames, frames), d)  # frame index, shared by a unit and its frame
        self.gpt = GPT(GPTConfig(vocab_size=1, block_size=2 * (prompt_frames + frames), n_layer=n_layer,
                                 n_head=n_head, n_embd=d, causal=True, tie_weights=False))
        self.heads = nn.Linear(d, levels * codebook)  # L independent heads, one matrix
        self.foresight = nn.Linear(d, foresight_dim) if foresight_dim else None
        for emb in (self.unit_emb, self.code_emb, self.kind_emb, self.time_emb):  # the GPT's scale (its wpe)
            nn.init.normal_(emb.weight, std=0.02)
        self.register_buffer("offsets", torch.arange(levels) * codebook, persistent=False)
        p, t = prompt_frames, frames
        steps = torch.arange(t)
        self.register_buffer("query", 2 * p + 2 * steps if streaming else 2 * p + t - 1 + steps, persistent=False)

    def embed(self, batch: torch.Tensor, unit_keep: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 2(P+T), d) input embeddings in this model's layout."""
        pu, pc, u, c = unpack(batch, self.prompt_frames, self.frames, self.levels)
        if unit_keep is not None:
            u = torch.where(unit_keep, u, self.n_units)
        k, tp, tt = self.kind_emb.weight, self.time_emb.weight[:self.prompt_frames], self.time_emb.weight[:self.frames]
        e_pu = self.unit_emb(pu) + k[0] + tp
        e_pa = self.code_emb(pc + self.offsets).sum(-2) + k[1] + tp
        e_u = self.unit_emb(u) + k[2] + tt
        e_a = self.code_emb(c + self.offsets).sum(-2) + k[3] + tt
        n, p, d = e_pu.shape
        prompt = torch.stack([e_pu, e_pa], 2).reshape(n, 2 * p, d)
        if self.streaming:
            source = torch.stack([e_u, e_a], 2).reshape(n, 2 * self.frames, d)
        else:
            source = torch.cat([e_u, e_a], 1)
        return torch.cat([prompt, source], 1)

    def forward(self, batch: torch.Tensor, unit_keep: torch.Tensor | None = None):
        e = self.embed(batch, unit_keep)
        h = self.gpt(None, embeds=e, hidden=True)[:, self.query]  # (N, T, d)
        logits = self.heads(h).reshape(*h.shape[:2], self.levels, self.codebook)
        return logits, h


class UnitTeacher(nn.Module):
    """The non-streaming teacher: a bidirectional GPT over the source units, trained as a masked unit model
    (mask token = row ``n_units``). ``context(units, horizon)`` summarises the present and future: the mean of its
    hidden states over frames t … t + horizon (clipped at the end) → (N, T, d)."""

    def __init__(self, n_units: int, frames: int, d: int = 32, n_layer: int = 2, n_head: int = 4):
        super().__init__()
        self.n_units = n_units
        self.emb = nn.Embedding(n_units + 1, d)
        nn.init.normal_(self.emb.weight, std=0.02)  # the GPT's scale (its wpe)
        self.gpt = GPT(GPTConfig(vocab_size=1, block_size=frames, n_layer=n_layer, n_head=n_head, n_embd=d,
                                 causal=False, tie_weights=False))
        self.head = nn.Linear(d, n_units)

    def hidden(self, units: torch.Tensor) -> torch.Tensor:
        return self.gpt(None, embeds=self.emb(units), hidden=True)

    def forward(self, units: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden(units))

    @torch.no_grad()
    def context(self, units: torch.Tensor, horizon: int) -> torch.Tensor:
        return window_mean(self.hidden(units), horizon)


def window_mean(h: torch.Tensor, horizon: int) -> torch.Tensor:
    """(N, T, d) → (N, T, d): out[:, t] = mean of h[:, t : t + horizon + 1] (fewer frames at the end)."""
    t = h.shape[1]
    c = torch.cat([h.new_zeros(h.shape[0], 1, h.shape[2]), h.cumsum(1)], 1)  # (N, T+1, d)
    start = torch.arange(t, device=h.device)
    end = (start + horizon + 1).clamp(max=t)
    return (c[:, end] - c[:, start]) / (end - start).to(h.dtype)[None, :, None]


class TeacherObjective(Objective):
    """Masked unit modelling for :class:`UnitTeacher`: ``rate`` of the frames masked (at least one per row),
    cross-entropy at the masked frames. ``x`` is the units (N, T)."""

    def __init__(self, rate: float, seed: int):
        self.rate, self.g = rate, torch.Generator().manual_seed(seed)

    def __call__(self, model, x, y):
        keep = (torch.rand(x.shape, generator=self.g) >= self.rate).to(x.device)
        keep[keep.all(1), 0] = False
        logits = model(torch.where(keep, x, model.n_units))
        loss = F.cross_entropy(logits[~keep], x[~keep])
        return {"loss": loss, "acc": (logits[~keep].argmax(-1) == x[~keep]).float().mean()}


class StreamVoiceObjective(Objective):
    """Cross-entropy of every codebook of every target frame (mean over levels), plus, for E, semantic masking
    (each source unit replaced by the mask token with probability ``mask_rate``; prompts are never masked) and
    the foresight loss ``foresight_weight`` · MSE(projection of h_t, the teacher's c_t)."""

    def __init__(self, prompt_frames: int, frames: int, levels: int, mask_rate: float = 0.0,
                 teacher: UnitTeacher | None = None, horizon: int = 3, foresight_weight: float = 1.0,
                 seed: int = 0):
        self.p, self.t, self.levels = prompt_frames, frames, levels
        self.mask_rate, self.teacher, self.horizon, self.weight = mask_rate, teacher, horizon, foresight_weight
        self.g = torch.Generator().manual_seed(seed)

    def __call__(self, model, x, y):
        _, _, units, codes = unpack(x, self.p, self.t, self.levels)
        keep = None
        if self.mask_rate > 0:
            keep = (torch.rand(units.shape, generator=self.g) >= self.mask_rate).to(x.device)
        logits, h = model(x, keep)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), codes.reshape(-1))
        out = {"loss": ce, "ce": ce}
        if self.teacher is not None:
            target = self.teacher.context(units, self.horizon)
            fore = F.mse_loss(model.foresight(h), target)
            out["loss"] = ce + self.weight * fore
            out["foresight"] = fore
        return out


# ---------------------------------------------------------------------------------------------------------------
# evaluation


@torch.no_grad()
def correct(model: AlternatingLM, packed: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, T, L) bool: the argmax of each codebook head equals the true code (teacher forcing: the true
    previous frames and the whole unprompted source are given; no masking)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(packed), batch_size):
        b = packed[i:i + batch_size].to(device)
        logits, _ = model(b)
        out.append((logits.argmax(-1) == unpack(b, model.prompt_frames, model.frames, model.levels)[3]).cpu())
    return torch.cat(out)


def copy_correct(packed: torch.Tensor, prompt_frames: int, frames: int, levels: int) -> torch.Tensor:
    """(N, T, L) bool of the copy baseline: a_t predicted as a_{t-1} (a_0 as the prompt's last frame)."""
    _, pc, _, c = unpack(packed, prompt_frames, frames, levels)
    prev = torch.cat([pc[:, -1:], c[:, :-1]], 1)
    return prev == c


def by_boundary(hits: torch.Tensor, to_boundary: torch.Tensor, max_r: int) -> torch.Tensor:
    """(max_r,) mean error (1 − accuracy over levels) of the frames 1 … max_r frames before the next boundary."""
    err = 1 - hits.float().mean(-1)  # (N, T)
    return torch.stack([err[to_boundary == r].mean() for r in range(1, max_r + 1)])


@torch.no_grad()
def convert(model: AlternatingLM, packed: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Streaming-style conversion, greedy: a_1, a_2, … are generated one frame at a time, each fed back as the
    history of the next (the true codes in ``packed`` are never read). Returns the codes (N, T, L)."""
    model.eval()
    device = next(model.parameters()).device
    p, t, lv = model.prompt_frames, model.frames, model.levels
    out = []
    for i in range(0, len(packed), batch_size):
        b = packed[i:i + batch_size].clone().to(device)
        start = p + p * lv + t  # where the target codes begin in the packed layout
        b[:, start:] = 0
        for step in range(t):
            logits, _ = model(b)
            b[:, start + step * lv:start + (step + 1) * lv] = logits[:, step].argmax(-1)
        out.append(b[:, start:].reshape(len(b), t, lv).cpu())
    return torch.cat(out)


def next_unit_effect(world: SpeechWorld, chains: Chains, max_r: int) -> torch.Tensor:
    """(max_r,) mean squared change of a frame's content (:meth:`SpeechWorld.content`) when only the next unit is
    replaced (by the following unit id, mod U), for frames 1 … max_r frames before the next boundary."""
    other = Chains(chains.units, chains.prev, (chains.next + 1) % world.n_units, chains.to_boundary,
                   chains.position)
    change = (world.content(other) - world.content(chains)).pow(2).mean(-1)  # (N, T)
    return torch.stack([change[chains.to_boundary == r].mean() for r in range(1, max_r + 1)])
