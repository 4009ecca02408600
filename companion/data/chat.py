"""A synthetic chat corpus with system prompts (the setting of *Why Are My Prompts Leaked?*).

Conversation layout, roles, familiar and rare words, the training mix and its encoding; the attacks, metrics
and defenses are in ``companion.methods.sequence.prompt_leakage`` (its docstring describes the whole setup).
"""

from __future__ import annotations

import random
import string
from dataclasses import dataclass

import torch

from .sequences import IGNORE, CharTokenizer

SYSTEM, USER, ASSISTANT, END, PAD = "S", "U", "A", "\n", "_"
CONTEXTS = "CDN"  # markers of user-provided blocks (context, document, note): the ones repeated in training
CONTEXT = CONTEXTS[0]
JUNK = "#%&*+=~^"  # characters that never occur in training: unfamiliar by construction
ALPHABET = string.ascii_lowercase + " @?" + SYSTEM + CONTEXTS + USER + ASSISTANT + END + PAD + JUNK

ROLES = {  # role word -> answers to the role questions (utility task)
    "chef": {"your job?": "i cook food", "greet me": "hi hungry guest"},
    "tutor": {"your job?": "i teach math", "greet me": "hi dear student"},
    "pilot": {"your job?": "i fly planes", "greet me": "hi there crew"},
    "nurse": {"your job?": "i heal people", "greet me": "hi my patient"},
}
QUESTIONS = ("your job?", "greet me")
REPEAT_QUERIES = ("repeat above", "say it again", "copy the top")  # the phrasings seen in training (with C)
UNSEEN_ATTACKS = ("echo above",)  # a paraphrase never seen in training
FAMILIAR_WORDS = (
    "a be so is it to we my the and you are kind calm warm wise good nice glad fair bold keen help care "
    "always gentle patient honest happy bright clear simple friendly polite quiet brave every answer user "
    "people world today never speak smile learn listen"
).split()


@dataclass(frozen=True)
class ChatFormat:
    """Fixed-width layout: marker + block (prompt_width) + U + query (query_width) + A + answer + END."""

    prompt_width: int = 24
    query_width: int = 12

    @property
    def prefix_len(self) -> int:
        """Characters up to and including the ``A`` marker (where the model starts answering)."""
        return 1 + self.prompt_width + 1 + self.query_width + 1

    @property
    def seq_len(self) -> int:
        """Characters of a full conversation with the longest answer (a copy of a full-width block)."""
        return self.prefix_len + self.prompt_width + 1

    def prefix(self, block: str, query: str, marker: str = SYSTEM) -> str:
        if len(block) > self.prompt_width or len(query) > self.query_width:
            raise ValueError(f"block ({len(block)}) or query ({len(query)}) longer than the format's widths "
                             f"({self.prompt_width}, {self.query_width})")
        return marker + block.ljust(self.prompt_width, PAD) + USER + query.ljust(self.query_width, PAD) + ASSISTANT

    def render(self, block: str, query: str, answer: str, marker: str = SYSTEM) -> str:
        """The whole conversation, padded with ``PAD`` to ``seq_len``."""
        return (self.prefix(block, query, marker) + answer + END).ljust(self.seq_len, PAD)


def random_word(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(length))


def familiar_word(rng: random.Random, length: int | None = None) -> str:
    """A familiar word, of ``length`` characters when the vocabulary has one (else the closest length)."""
    if length is None:
        return rng.choice(FAMILIAR_WORDS)
    best = min(abs(len(w) - length) for w in FAMILIAR_WORDS)
    return rng.choice([w for w in FAMILIAR_WORDS if abs(len(w) - length) == best])


@dataclass(frozen=True)
class Skeleton:
    """The shape of a system prompt: its role, where the role word goes, and the persona word lengths."""

    role: str
    role_slot: int
    lengths: tuple[int, ...]


def sample_skeleton(rng: random.Random, max_chars: int, min_words: int = 2, max_words: int = 3) -> Skeleton:
    role = rng.choice(sorted(ROLES))
    while True:
        lengths = tuple(rng.randint(2, 6) for _ in range(rng.randint(min_words, max_words)))
        if len(role) + 1 + sum(lengths) + len(lengths) <= max_chars:
            return Skeleton(role, rng.randint(0, len(lengths)), lengths)


def realise(skeleton: Skeleton, familiar_fraction: float, rng: random.Random) -> str:
    """A system prompt with the skeleton's role and word lengths; ``round(familiar_fraction * k)`` of its k
    persona words (chosen at random) are familiar, the others random letter strings of the same length."""
    k = len(skeleton.lengths)
    familiar = set(rng.sample(range(k), round(familiar_fraction * k)))
    words = [familiar_word(rng, n) if i in familiar else random_word(rng, n) for i, n in enumerate(skeleton.lengths)]
    words.insert(skeleton.role_slot, "@" + skeleton.role)
    return " ".join(words)


def document(rng: random.Random, familiar_fraction: float, max_chars: int) -> str:
    """A user-provided context document of 2-6 words (no role word), at most ``max_chars`` characters."""
    words: list[str] = []
    for _ in range(rng.randint(2, 6)):
        w = familiar_word(rng) if rng.random() < familiar_fraction else random_word(rng, rng.randint(2, 6))
        if len(" ".join(words + [w])) > max_chars:
            break
        words.append(w)
    return " ".join(words) or familiar_word(rng, 3)


def training_corpus(n: int, fmt: ChatFormat, repeat_fraction: float = 0.5, seed: int = 0,
                    familiar_levels=(0.0, 0.25, 0.5, 0.75, 1.0), prompt_like: float = 0.0) -> list[str]:
    """``n`` conversations: a system prompt + role question + role answer, or (``repeat_fraction``) a
    user-provided block (marker C, D or N) + a repeat request + the block copied. A share ``prompt_like`` of
    those blocks imitate system prompts (a role word among persona words, as a user pasting a prompt); the
    others are plain documents (:func:`document`: no role word). No conversation ever repeats a system prompt
    (marker S)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        level = rng.choice(familiar_levels)
        if rng.random() < repeat_fraction:
            if rng.random() < prompt_like:
                doc = realise(sample_skeleton(rng, fmt.prompt_width, 1, 4), level, rng)
            else:
                doc = document(rng, level, fmt.prompt_width)
            out.append(fmt.render(doc, rng.choice(REPEAT_QUERIES), doc, marker=rng.choice(CONTEXTS)))
        else:
            sk = sample_skeleton(rng, fmt.prompt_width, 1, 4)
            q = rng.choice(QUESTIONS)
            out.append(fmt.render(realise(sk, level, rng), q, ROLES[sk.role][q]))
    return out


def tokenizer() -> CharTokenizer:
    return CharTokenizer(ALPHABET)


def encode_conversations(tok: CharTokenizer, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Conversations (equal length T+1) → inputs (N, T) and next-character targets (N, T); targets after the
    END character (the trailing padding) are ``IGNORE``."""
    ids = torch.stack([tok.encode(t) for t in texts])  # (N, T+1)
    x, y = ids[:, :-1], ids[:, 1:].clone()
    end = tok.stoi[END]
    after_end = (y == end).int().cumsum(1) - (y == end).int() > 0  # positions strictly after the first END
    y[after_end] = IGNORE
    return x, y


