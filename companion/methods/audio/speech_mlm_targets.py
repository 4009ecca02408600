"""Prediction targets for masked speech pre-training (Chen et al., 2024) at toy scale.

HuBERT-style masked prediction (:mod:`companion.models.msm`): spans of the encoder's tokens are replaced by a
mask embedding and one linear head per target stream predicts the discrete target of every masked token. The
paper asks what the *targets* should be; here three target sets train the same encoder from the same
initialisation, with the same masks, batches and steps:

- ``mfcc``: k-means units of MFCC + Δ + ΔΔ frames (HuBERT's first iteration), one head;
- ``rvq``: residual k-means (RVQ) codes of log-mel frames, one head per level (fine acoustic detail);
- ``multi``: both streams, one head each (multi-target prediction).

The encoders are then frozen and probed on clips no pre-training step saw (:func:`held_out_split`): a word probe
(linear, mean-pooled features, voices unseen by the probe), a speaker probe (linear, words unseen by the probe)
and a denoising probe (ridge regression from the token states of a noisy clip to its clean log-mel,
:func:`denoise_probe`).

Shapes: waveforms (N, S); features time-major (N, T, C); targets at the token rate (N, T', H) int64; keep masks
(N, T') bool, True = keep.
"""

from __future__ import annotations

from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import torch

from ... import masks, train
from ...data import speech
from ...eval import probes
from ...models.msm import MSMEncoder, msm_loss


def pick_voices(n: int) -> list[str]:
    """``n`` of ``speech.ENGLISH_VOICES``, a fixed draw (the same for every seed, so the corpus cache is shared)."""
    order = torch.randperm(len(speech.ENGLISH_VOICES), generator=torch.Generator().manual_seed(0))
    return [speech.ENGLISH_VOICES[i] for i in sorted(order[:n].tolist())]


def centre_speech(waves: torch.Tensor, samples: int, threshold: float = 0.01) -> torch.Tensor:
    """(N, S) → (N, samples): each clip cut to its voiced part (samples above ``threshold`` × its peak), then
    centred in ``samples`` (zero padding, or a centred crop when longer). espeak-ng ends every word with a few
    hundred ms of silence; without this the word would sit left of centre and a short window would cut it."""
    cut = []
    for w in waves:
        loud = (w.abs() >= threshold * w.abs().max().clamp_min(1e-8)).nonzero().flatten()
        cut.append(w[loud[0]:loud[-1] + 1].numpy() if len(loud) else w.numpy())
    return speech.fit_length(cut, samples)


@dataclass
class Split:
    """Bool (N,) masks of one held-out split: the probes' common test clips (held-out voices × held-out words),
    the word probe's training clips (the other voices, every word), the speaker probe's (the other words, every
    voice), and the pre-training clips (everything but the test clips)."""

    test: torch.Tensor
    word_train: torch.Tensor
    speaker_train: torch.Tensor
    pretrain: torch.Tensor
    held_texts: list[int]
    held_voices: list[int]


def held_out_split(text: torch.Tensor, voice: torch.Tensor, share: float, generator: torch.Generator) -> Split:
    """Hold out round(share · n) of the texts and of the voices (drawn with ``generator``); text, voice: (N,)."""
    n_text, n_voice = int(text.max()) + 1, int(voice.max()) + 1
    held_t = torch.randperm(n_text, generator=generator)[:max(1, round(share * n_text))]
    held_v = torch.randperm(n_voice, generator=generator)[:max(1, round(share * n_voice))]
    in_t, in_v = torch.isin(text, held_t), torch.isin(voice, held_v)
    test = in_t & in_v
    return Split(test, ~in_v, ~in_t, ~test, sorted(held_t.tolist()), sorted(held_v.tolist()))


class MaskedPrediction(train.Objective):
    """HuBERT's masked prediction loss for :func:`companion.train.fit`: inputs (B, T, C) features, targets
    (B, T', H) codes; each step masks exactly round(rate · T') tokens per clip in spans of ``span`` tokens
    (``masks.frame_spans``, drawn from a generator seeded with ``seed``: the same masks for every arm that sees
    the same batches)."""

    def __init__(self, rate: float, span: int, seed: int):
        self.rate, self.span = rate, span
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, model: MSMEncoder, x: torch.Tensor, y: torch.Tensor) -> dict:
        keep = masks.frame_spans(len(x), model.n_tokens(x.shape[1]), self.rate, self.span,
                                 generator=self.generator).to(x.device)
        return {"loss": msm_loss(model, x, y, keep)}


@torch.no_grad()
def masked_accuracy(model: MSMEncoder, feats: torch.Tensor, targets: torch.Tensor, rate: float, span: int,
                    seed: int) -> torch.Tensor:
    """(N, H): per clip and head, the share of masked tokens whose target the model predicts (argmax), one span
    mask per clip drawn with a generator seeded with ``seed``."""
    keep = masks.frame_spans(len(feats), model.n_tokens(feats.shape[1]), rate, span,
                             generator=torch.Generator().manual_seed(seed))
    logits = model(feats, keep)
    masked = (~keep).float()
    hits = [((lg.argmax(-1) == targets[..., h]).float() * masked).sum(1) / masked.sum(1)
            for h, lg in enumerate(logits)]
    return torch.stack(hits, dim=1)


def token_states(model: MSMEncoder, feats: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, T, C) → (N, T', d): the frozen encoder's final states, nothing masked."""
    return train.predict(model.encode, feats, batch_size=batch_size)


def denoise_probe(train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
                  alpha: float = 1.0) -> torch.Tensor:
    """Ridge regression, token by token, from features of noisy clips (N, T', d) to the clean targets (N, T', C);
    returns the per-clip mean squared error of the test clips (M,)."""
    flat = lambda z: z.reshape(-1, z.shape[-1])
    mse = probes.ridge_probe(flat(train_x), flat(train_y), flat(test_x), flat(test_y), alpha=alpha)
    return mse.reshape(len(test_x), -1).mean(dim=1)


def mutual_information(codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Mutual information in bits between a frame's code and its clip's label: codes (N, T) int, labels (N,)."""
    from sklearn.metrics import mutual_info_score

    frames = labels[:, None].expand_as(codes)
    return float(mutual_info_score(frames.reshape(-1).numpy(), codes.reshape(-1).numpy()) / np.log(2))


def task_average(word: torch.Tensor, speaker: torch.Tensor, denoise_mse: torch.Tensor,
                 reference: float) -> torch.Tensor:
    """Per test clip, the mean of word correctness, speaker correctness and the denoising probe's explained
    variance ``1 - mse / reference`` (``reference``: the MSE of predicting the training mean): (M,) each → (M,)."""
    return (word.float() + speaker.float() + (1 - denoise_mse / reference)) / 3


def probe_bars(scores: dict[str, dict[str, tuple[float, float, float]]], references: dict[str, dict[str, float]],
               colours: dict[str, str] | None = None):
    """One panel per probe: bars of ``scores[probe][arm] = (mean, lo, hi)`` with (lo, hi) error bars, and dashed
    reference levels ``references[probe][name]``. Returns the figure."""
    fig, axes = plt.subplots(1, len(scores), figsize=(3.0 * len(scores), 3.2))
    for ax, (probe, arms) in zip(np.atleast_1d(axes), scores.items()):
        names = list(arms)
        means = np.array([arms[a][0] for a in names])
        err = np.array([[m - arms[a][1], arms[a][2] - m] for a, m in zip(names, means)]).T
        ax.bar(range(len(names)), means, yerr=err, capsize=3, edgecolor="white",
               color=[(colours or {}).get(a, f"C{i}") for i, a in enumerate(names)])
        for j, (ref, level) in enumerate(references.get(probe, {}).items()):
            ax.axhline(level, ls=("--", ":", "-.")[j % 3], c="k", lw=1, label=ref)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(probe, fontsize=10)
        ax.spines[["top", "right"]].set_visible(False)
        if references.get(probe):
            ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
