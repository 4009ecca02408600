"""Ask2Mask (ATM): masked speech modelling guided by an in-domain scorer's frame confidence.

ATM pretrains a masked-speech model on a pool that mixes in-domain speech with out-of-domain data. An external
*scorer* (a classifier trained on a small labelled in-domain set) gives every frame a confidence; ATM

1. starts the mask spans at frames drawn in proportion to that confidence (instead of uniformly at random), at the
   same masking rate, so the masked-prediction loss falls on frames the scorer recognises; and
2. (ATM+U) scales each utterance's loss by its utterance-level confidence (the mean frame confidence).

Here the scorer is a small 1-D conv net on log-mel frames that predicts, per frame, which of the words is being
spoken or "background" (:func:`frame_labels` labels the frames from the clean signal's energy). Its confidence is
the largest *word* posterior, so silence, noise and unrecognised speech score low (:func:`frame_confidence`). The
energy control (:func:`energy_weights`) starts spans on loud frames instead: a voice-activity detector that cannot
tell in-domain speech from junk. :class:`MSMObjective` trains ``models.msm.MSMEncoder`` with any of these span
weights and optional utterance weights; all arms share masking rate, span length, steps and minibatches.
"""

from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F

from companion import audio, masks, train
from companion.data import sounds, speech
from companion.models.msm import SpeechClassifier, msm_loss

NOISES = ("white", "pink", "brown")


def english_voices() -> tuple[str, ...]:
    """``speech.ENGLISH_VOICES`` reordered male, female, male, ... (accent by accent), so that any leading slice
    and any split of it into halves mixes both."""
    voices = speech.ENGLISH_VOICES
    half = len(voices) // 2
    return tuple(v for pair in zip(voices[:half], voices[half:]) for v in pair)


def frame_labels(clean_feats: torch.Tensor, words: torch.Tensor, n_words: int,
                 threshold_db: float = 30.0) -> torch.Tensor:
    """Per-frame scorer labels from the clean signal: the utterance's word where a frame is speech, else background.

    ``clean_feats`` (N, T, C) log-mel (natural log) of the *clean* clips, ``words`` (N,) word ids in [0, n_words).
    A frame is speech when its energy (log of the summed mel power) is within ``threshold_db`` dB of the
    utterance's loudest frame. Returns (N, T) long labels in [0, n_words]; ``n_words`` = background.
    """
    active = energy_weights(clean_feats, threshold_db).bool()
    background = torch.full(active.shape, n_words, dtype=torch.long)
    return torch.where(active, words[:, None].expand_as(background), background)


def scorer_set(clean: torch.Tensor, words: torch.Tensor, n_words: int, generator: torch.Generator,
               snr_db: tuple[float, float] = (0.0, 20.0),
               threshold_db: float = 30.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The scorer's labelled training set from ``clean`` (M, S) in-domain clips of ``words`` (M,).

    Three parts, all labelled from the clean signal (:func:`frame_labels`): the clean clips; the same clips mixed
    with white/pink/brown noise (dealt out in turn) at an SNR drawn uniformly from ``snr_db``; and M // 2
    noise-only clips (every frame background) at random levels. Returns log-mel features (M', T, 40) and
    labels (M', T) long, M' = 2M + M // 2.
    """
    m, samples = clean.shape
    labels = frame_labels(audio.log_mel(clean), words, n_words, threshold_db)
    noise = torch.cat([sounds.noise(NOISES[i % 3], 1, samples, generator) for i in range(m)])
    snr = torch.empty(m).uniform_(*snr_db, generator=generator)
    noisy = torch.cat([sounds.mix(clean[i:i + 1], noise[i:i + 1], float(snr[i])) for i in range(m)])
    k = m // 2
    level = torch.empty(k, 1).uniform_(0.01, 0.2, generator=generator)
    only = torch.cat([sounds.noise(NOISES[i % 3], 1, samples, generator) for i in range(k)]) * level
    feats = audio.log_mel(torch.cat([clean, noisy, only]))
    background = torch.full((k, labels.shape[1]), n_words, dtype=torch.long)
    return feats, torch.cat([labels, labels, background])


class FrameScorer(nn.Module):
    """The external scorer: a small 1-D conv frame classifier on log-mel features.

    ``forward(feats (N, T, C)) -> (N, T, n_classes)`` logits (same T: padded convolutions); inputs are standardised
    per channel with buffers set by :meth:`normalize_with`. ``n_classes`` = words + 1 (background last).
    """

    def __init__(self, n_input: int, n_classes: int, width: int = 64, layers: int = 3, kernel: int = 5):
        super().__init__()
        blocks, c = [], n_input
        for _ in range(layers):
            blocks += [nn.Conv1d(c, width, kernel, padding=kernel // 2), nn.BatchNorm1d(width), nn.ReLU()]
            c = width
        self.body = nn.Sequential(*blocks)
        self.head = nn.Conv1d(width, n_classes, 1)
        self.register_buffer("mean", torch.zeros(n_input))
        self.register_buffer("std", torch.ones(n_input))

    def normalize_with(self, feats: torch.Tensor) -> FrameScorer:
        """Set the per-channel input mean/std from ``feats`` (N, T, C)."""
        flat = feats.reshape(-1, feats.shape[-1])
        self.mean.copy_(flat.mean(0))
        self.std.copy_(flat.std(0).clamp_min(1e-5))
        return self

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        x = ((feats - self.mean) / self.std).transpose(1, 2)  # (N, C, T)
        return self.head(self.body(x)).transpose(1, 2)


def scorer_loss(model: FrameScorer, feats: torch.Tensor, labels: torch.Tensor) -> dict:
    """Frame-level cross-entropy for ``train.fit``: ``feats`` (B, T, C), ``labels`` (B, T) long."""
    logits = model(feats)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))
    return {"loss": loss, "frame_acc": (logits.argmax(-1) == labels).float().mean().item()}


@torch.no_grad()
def frame_posteriors(scorer: FrameScorer, feats: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """Softmax posteriors (N, T, n_classes) of the scorer, in batches, in eval mode."""
    scorer.eval()
    return torch.cat([scorer(feats[i:i + batch_size]).softmax(-1) for i in range(0, len(feats), batch_size)])


def frame_confidence(posteriors: torch.Tensor) -> torch.Tensor:
    """ATM's frame confidence (N, T): the largest posterior among the word classes (background, last, excluded)."""
    return posteriors[..., :-1].amax(-1)


def utterance_confidence(confidence: torch.Tensor) -> torch.Tensor:
    """ATM+U's utterance confidence (N,): the mean frame confidence of each utterance."""
    return confidence.mean(-1)


def energy_weights(feats: torch.Tensor, threshold_db: float = 30.0) -> torch.Tensor:
    """The energy (VAD) control's span-start weights (N, T): 1 on frames within ``threshold_db`` dB of the
    utterance's loudest frame (of the features the model sees, noise included), else 0."""
    energy_db = 10.0 * torch.logsumexp(feats, dim=-1) / torch.log(torch.tensor(10.0))
    return (energy_db >= energy_db.amax(dim=1, keepdim=True) - threshold_db).float()


class MSMObjective(train.Objective):
    """HuBERT-style masked prediction with ATM's span weights and utterance weights, for ``train.fit``.

    ``fit(model, feats, torch.arange(N), ..., loss_fn=objective)``: the targets of ``fit`` are the pool indices
    of the minibatch, used to look up ``targets`` (N, T', H) long (token rate), ``span_weights`` (N, T') (span
    starts ∝ these; None = uniform random spans) and ``utterance_weights`` (N,) (None = all 1). Exactly
    ``round(rate * T')`` tokens per utterance are masked, in spans of ``span`` tokens; the masks are drawn from
    a generator seeded with ``seed``, so arms that share the seed and weights share the masks.
    """

    def __init__(self, targets: torch.Tensor, rate: float, span: int, seed: int,
                 span_weights: torch.Tensor | None = None, utterance_weights: torch.Tensor | None = None):
        self.targets, self.rate, self.span = targets, rate, span
        self.span_weights, self.utterance_weights = span_weights, utterance_weights
        self.generator = torch.Generator().manual_seed(seed)

    def keep(self, idx: torch.Tensor) -> torch.Tensor:
        """Keep mask (B, T') for the pool items ``idx`` (B,): True = visible, False = masked."""
        weights = None if self.span_weights is None else self.span_weights[idx.cpu()]
        return masks.frame_spans(len(idx), self.targets.shape[1], self.rate, span=self.span, weights=weights,
                                 generator=self.generator)

    def __call__(self, model, x: torch.Tensor, idx: torch.Tensor) -> dict:
        keep = self.keep(idx).to(x.device)
        targets = self.targets[idx.cpu()].to(x.device)
        weights = None if self.utterance_weights is None else self.utterance_weights[idx.cpu()].to(x.device)
        return {"loss": msm_loss(model, x, targets, keep, weights)}


def finetune(encoder, train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
             n_classes: int, steps: int, lr: float, batch_size: int, seed: int,
             device: str = "cpu") -> torch.Tensor:
    """Fine-tune a copy of ``encoder`` with a linear word classifier on the labelled target-domain clips (the
    paper's downstream step, here word recognition in place of ASR). Features (N, T, C), labels (N,).
    Trains on ``device``; returns the per-clip correctness (M,) bool on ``test_x``; ``encoder`` is left unchanged."""
    clf = SpeechClassifier(copy.deepcopy(encoder), n_classes)
    train.fit(clf, train_x, train_y, steps, batch_size=batch_size, lr=lr, seed=seed, device=device,
              progress=False)
    return train.predict(clf.cpu(), test_x).argmax(-1) == test_y
