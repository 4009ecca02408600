"""Tests of companion.methods.sequence.prompt_leakage: the chat layout, the training mix (never a repeated system
prompt; a set share of prompt-like user blocks), defenses, the fuzzy extraction metric, perplexity and rank
correlation."""

from __future__ import annotations

import random
import tomllib
from pathlib import Path

import pytest
import torch

from companion import metrics
from companion.methods.sequence import prompt_leakage
from companion.models import GPT, GPTConfig
from companion.data.sequences import IGNORE
from companion.data import chat


def test_format_places_every_turn_at_a_fixed_offset():
    fmt = chat.ChatFormat(prompt_width=24, query_width=12)
    text = fmt.render("@chef so kind", "your job?", "i cook food")
    assert len(text) == fmt.seq_len
    assert text[0] == chat.SYSTEM and text[1 + 24] == chat.USER and text[fmt.prefix_len - 1] == chat.ASSISTANT
    assert text[fmt.prefix_len:].startswith("i cook food" + chat.END)
    with pytest.raises(ValueError, match="longer than"):
        fmt.prefix("x" * 25, "hi")


def test_training_corpus_never_repeats_a_system_prompt():
    fmt = chat.ChatFormat()
    texts = chat.training_corpus(2000, fmt, repeat_fraction=0.5, seed=1, prompt_like=0.5)
    repeats = [t for t in texts if t[0] in chat.CONTEXTS]
    assert 800 < len(repeats) < 1200
    for t in texts:
        block = t[1:1 + fmt.prompt_width].rstrip(chat.PAD)
        query = t[2 + fmt.prompt_width:fmt.prefix_len - 1].rstrip(chat.PAD)
        answer = t[fmt.prefix_len:].split(chat.END)[0]
        if t[0] == chat.SYSTEM:
            role = next(w[1:] for w in block.split() if w.startswith("@"))
            assert query in chat.QUESTIONS and answer == chat.ROLES[role][query]
        else:
            assert query in chat.REPEAT_QUERIES and answer == block
    assert chat.training_corpus(50, fmt, seed=3) == chat.training_corpus(50, fmt, seed=3)


@pytest.mark.parametrize("share", [0.0, 0.1, 1.0])
def test_prompt_like_sets_the_share_of_user_blocks_that_imitate_system_prompts(share):
    fmt = chat.ChatFormat()
    texts = chat.training_corpus(4000, fmt, repeat_fraction=0.5, seed=2, prompt_like=share)
    blocks = [t[1:1 + fmt.prompt_width] for t in texts if t[0] in chat.CONTEXTS]
    prompt_like = sum("@" in b for b in blocks) / len(blocks)  # only pasted prompts hold a role word
    assert prompt_like == pytest.approx(share, abs=0.03)


def test_realise_keeps_the_skeleton_and_sets_the_familiar_share():
    rng = random.Random(0)
    sk = chat.Skeleton("tutor", 1, (4, 4, 3))
    familiar = chat.realise(sk, 1.0, rng).split()
    rare = chat.realise(sk, 0.0, rng).split()
    assert familiar[1] == rare[1] == "@tutor"
    assert all(w in chat.FAMILIAR_WORDS for i, w in enumerate(familiar) if i != 1)
    assert [len(w) for w in rare] == [4, 6, 4, 3]
    half = chat.realise(sk, 2 / 3, rng).split()
    assert sum(w in chat.FAMILIAR_WORDS for w in half) >= 2


def test_encoded_targets_ignore_the_padding_after_the_answer():
    fmt = chat.ChatFormat()
    tok = chat.tokenizer()
    x, y = chat.encode_conversations(tok, [fmt.render("@chef kind", "your job?", "i cook food")])
    assert x.shape == y.shape == (1, fmt.seq_len - 1)
    end = fmt.prefix_len + len("i cook food")  # index of END in the text = target index end-1
    assert y[0, end - 1] == tok.stoi[chat.END]
    assert (y[0, end:] == IGNORE).all() and (y[0, :end] != IGNORE).all()


@pytest.mark.parametrize("method", prompt_leakage.DEFENSES)
def test_defenses_keep_the_prompt_recoverable_after_stripping(method):
    rng = random.Random(0)
    prompt = "@nurse so kind wise"
    defended, added = prompt_leakage.defend(prompt, method, rng)
    if method == "none":
        assert defended == prompt and added == []
    else:
        assert defended != prompt
    # a model that copies the defended prompt verbatim is scored on the original after the strings are removed
    assert prompt_leakage.strip_added(defended, added) == prompt


def test_unknown_defense_is_a_one_line_error():
    with pytest.raises(ValueError, match="unknown"):
        prompt_leakage.defend("x", "donot", random.Random(0))


def test_fuzzy_match_is_the_partial_ratio_of_the_official_metric():
    prompt = "@chef so kind wise"
    assert prompt_leakage.fuzzy_match(prompt, prompt) == 100.0
    assert prompt_leakage.fuzzy_match("sure: " + prompt + " ok", prompt) == 100.0  # the prompt inside a response
    assert prompt_leakage.fuzzy_match("@chef so", prompt) == 100.0  # a fragment: the shorter string is aligned
    assert prompt_leakage.fuzzy_match("", prompt) == 0.0
    # equal lengths: the Indel similarity 1 - (insertions + deletions) / (len + len): "abcd" vs "abxd" = 1 - 2/8
    assert prompt_leakage.fuzzy_match("abcd", "abxd") == pytest.approx(75.0)
    # a shorter string against the best window of a longer one: "abc" in "xxabdxx" -> window "abd", 1 - 2/6,
    # rounded to an integer as thefuzz does
    assert prompt_leakage.fuzzy_match("abc", "xxabdxx") == 67.0


def test_extraction_scores_threshold_and_ngram():
    prompt = "@chef so kind wise"
    assert prompt_leakage.ngram_hit("sure: @chef so kind", prompt, n=3)
    assert not prompt_leakage.ngram_hit("i cook food", prompt, n=3)
    scores = prompt_leakage.extraction_scores([prompt, "i cook food", "@chxf so kind wise"], [prompt] * 3)
    assert scores["extracted"].tolist() == [1.0, 0.0, 1.0]  # one substitution: 1 - 2/36 >= 80 %
    assert scores["fuzzy"][1] < prompt_leakage.EXTRACT_THRESHOLD
    scores = prompt_leakage.extraction_scores(["#%& " + prompt], [prompt], added=[["#%&"]])
    assert scores["fuzzy"].item() == 100.0


def test_one_documented_threshold():
    params = tomllib.loads((Path(__file__).parents[1] / "notebooks/params/prompt_leakage.toml").read_text())
    assert params["extract_threshold"]["ci"] == params["extract_threshold"]["full"] == prompt_leakage.EXTRACT_THRESHOLD
    assert prompt_leakage.EXTRACT_THRESHOLD == 80.0  # the official fuzzy_match_recall default ratio


def test_nearest_similarity_is_the_best_whole_string_ratio():
    sim = prompt_leakage.nearest_similarity(["abcd", "@chef so"], ["abxd", "zzzz", "@chef so"])
    assert sim.tolist() == pytest.approx([75.0, 100.0])
    assert prompt_leakage.nearest_similarity(["abcd"], []).tolist() == [0.0]


def test_spearman_matches_known_values_and_its_interval_brackets_it():
    x = [1, 2, 3, 4, 5]
    assert metrics.spearman(x, [2, 4, 6, 8, 10]) == pytest.approx(1.0)
    assert metrics.spearman(x, [5, 4, 3, 2, 1]) == pytest.approx(-1.0)
    assert metrics.spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833)  # scipy.stats.spearmanr
    rng = torch.Generator().manual_seed(0)
    a = torch.randn(200, generator=rng)
    b = -a + 0.5 * torch.randn(200, generator=rng)
    rho, lo, hi = prompt_leakage.spearman_interval(a, b)
    assert rho == pytest.approx(metrics.spearman(a, b)) and lo <= rho <= hi < 0
    assert prompt_leakage.spearman_interval(a, b) == (rho, lo, hi)  # deterministic
    _, lo, hi = prompt_leakage.spearman_interval(a, torch.randn(200, generator=rng))
    assert lo < 0 < hi  # independent samples: the interval covers zero


def test_model_calls_shapes_and_perplexity_of_a_uniform_model():
    fmt = chat.ChatFormat()
    tok = chat.tokenizer()
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=fmt.seq_len, n_layer=1, n_head=2, n_embd=16)).eval()
    torch.nn.init.zeros_(model.lm_head.weight)  # tied: zero embeddings → uniform next-character distribution
    ppl = prompt_leakage.prompt_perplexity(model, tok, ["@chef kind", "@pilot wise bold"])
    assert torch.allclose(ppl, torch.full((2,), float(tok.vocab_size)), rtol=1e-4)
    out = prompt_leakage.respond(model, tok, [fmt.prefix("@chef kind", q) for q in ("your job?", "greet me")], 5)
    assert len(out) == 2 and all(isinstance(r, str) and len(r) <= 5 for r in out)
    x, y = chat.encode_conversations(tok, chat.training_corpus(4, fmt))
    loss = prompt_leakage.chat_loss(model, x, y, fmt.prefix_len - 1, answer_weight=1.0)
    assert loss.item() == pytest.approx(2 * torch.log(torch.tensor(float(tok.vocab_size))).item(), rel=1e-4)


def test_copy_path_score_reads_the_diagonal():
    att = torch.zeros(2, 10, 10)
    att[:, 5 + torch.arange(3), 1 + torch.arange(3)] = 1.0
    assert prompt_leakage.copy_path_score(att, 5, 1, 3) == 1.0
    assert prompt_leakage.copy_path_score(att, 5, 2, 3) == 0.0
