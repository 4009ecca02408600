"""Tests of companion.methods.parameter_masks.mue_early_exit: the saturation rule, exit accounting, and the equivalences the notebook
relies on (threshold 1.0 never exits; exiting at layer k equals truncating the stack at k)."""

from __future__ import annotations

import pytest
import torch

from companion.methods.parameter_masks import mue_early_exit as ee
from companion.models.seq2seq import Seq2Seq, Seq2SeqConfig

BOS = 14


def _model(seed=0) -> Seq2Seq:
    torch.manual_seed(seed)
    return Seq2Seq(Seq2SeqConfig(vocab_size=15, src_len=7, tgt_len=6, n_enc=3, n_dec=3, n_head=2, n_embd=32)).eval()


def _src(n=6, seed=1):
    return torch.randint(0, 14, (n, 7), generator=torch.Generator().manual_seed(seed))


def test_saturation_and_first_exit():
    a = torch.randn(4, 3, 5)
    assert torch.allclose(ee.saturation(a, a), torch.ones(4), atol=1e-6)
    assert torch.allclose(ee.saturation(a, -a), -torch.ones(4), atol=1e-6)
    scores = torch.tensor([[0.1, 0.95, 0.99], [0.1, 0.2, 0.3], [0.99, 0.1, 0.1]])
    assert ee.first_exit(scores, 0.9).tolist() == [2, 3, 1]  # no exit: the last layer
    assert ee.first_exit(scores, 1.0).tolist() == [3, 3, 3]


def test_teacher_forcing_input_and_expected_layers():
    t = torch.tensor([[3, 4, 5]])
    assert ee.teacher_forcing_input(t, BOS).tolist() == [[BOS, 3, 4]]
    enc, dec = torch.tensor([2, 3]), torch.tensor([[1, 3], [2, 2]])
    assert ee.expected_layers(enc, dec).tolist() == [4.0, 5.0]


@torch.no_grad()
def test_threshold_one_never_exits_early():
    m = _model()
    states, sims = ee.encoder_similarities(m, _src())
    assert sims.shape == (6, 3) and (sims <= 1.0 + 1e-6).all()
    assert ee.first_exit(sims, 1.0).eq(3).all()
    mem = m.memory(states[-1])
    full, _ = ee.greedy_decode(m, mem, 6, BOS)
    tokens, layers = ee.greedy_decode(m, mem, 6, BOS, rule="similarity", threshold=1.0)
    assert torch.equal(tokens, full) and layers.eq(3).all()
    tokens, layers = ee.greedy_decode(m, mem, 6, BOS, rule="confidence", threshold=1.01)
    assert torch.equal(tokens, full) and layers.eq(3).all()


@torch.no_grad()
def test_exit_at_layer_k_equals_truncating_the_stack():
    m = _model(seed=2)
    src = _src()
    states, _ = ee.encoder_similarities(m, src)
    for k in (1, 2):
        exited = ee.encoder_exit_memory(m, states, torch.full((6,), k))
        assert torch.allclose(exited, m.memory(m.encode(src, n_layers=k)[-1]), atol=1e-5)
    mem = m.memory(states[-1])
    truncated, _ = ee.greedy_decode(m, mem, 6, BOS, max_layers=1)
    for rule in ("similarity", "confidence"):  # threshold -1: every token exits after its first layer
        tokens, layers = ee.greedy_decode(m, mem, 6, BOS, rule=rule, threshold=-1.0)
        assert torch.equal(tokens, truncated) and layers.eq(1).all()


@torch.no_grad()
def test_per_item_exit_layers_mix_in_one_batch():
    """Items exiting at different encoder layers get exactly the memory of their own truncated encoder."""
    m = _model(seed=4)
    src = _src(4)
    states, _ = ee.encoder_similarities(m, src)
    depth = torch.tensor([1, 3, 2, 1])
    mem = ee.encoder_exit_memory(m, states, depth)
    for i, k in enumerate(depth.tolist()):
        assert torch.allclose(mem[i], m.memory(m.encode(src[i:i + 1], n_layers=k)[-1])[0], atol=1e-5)


def test_layerwise_loss_trains_every_exit():
    m = _model().train()
    src, tgt = _src(8), torch.randint(0, 10, (8, 6), generator=torch.Generator().manual_seed(5))
    loss = ee.layerwise_loss(m, src, tgt, BOS, generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in m.encoder[0].parameters())
    assert torch.isfinite(ee.final_loss(m, src, tgt, BOS))


def test_operating_point_and_pareto_front():
    quality, layers = [0.9, 0.99, 0.98, 0.5], [8.0, 6.0, 4.0, 2.0]
    assert ee.operating_point(quality, layers, 0.98) == 2
    assert ee.operating_point(quality, layers, 0.995) is None
    assert ee.pareto_front(quality, layers) == [3, 2, 1]


def test_bad_rule_is_a_clear_error():
    m = _model()
    with pytest.raises(ValueError, match="rule must be"):
        ee.greedy_decode(m, torch.zeros(1, 7, 32), 2, BOS, rule="entropy")


@torch.no_grad()
def test_evaluate_mue_and_the_static_encoder_arm_of_the_sweep():
    """MuE at one setting equals its sweep point; the static-encoder arm cuts every item at depth k and uses MuE's
    decoder exit; the settings of every point are recorded."""
    m = _model(seed=5)
    src, tgt = _src(8), torch.randint(0, 10, (8, 6), generator=torch.Generator().manual_seed(6))
    out = ee.sweep(m, src, tgt, BOS, [0.5, 1.0], [0.9, 1.0], [1.01])
    assert [p["setting"] for p in out["MuE"]] == [{"enc": 0.5, "dec": 0.9}, {"enc": 0.5, "dec": 1.0},
                                                   {"enc": 1.0, "dec": 0.9}, {"enc": 1.0, "dec": 1.0}]
    one = ee.evaluate_mue(m, src, tgt, BOS, 0.5, 0.9)
    assert torch.equal(one["layers"], out["MuE"][0]["items"]["layers"])
    static = out["static encoder + decoder exits"]
    assert len(static) == 3 * 2 and all(p["items"]["enc_layers"].eq(p["setting"]["enc"]).all() for p in static)
    # with the encoder exit disabled (threshold 1.0), MuE equals the static arm at full depth
    full = next(p for p in static if p["setting"] == {"enc": 3, "dec": 0.9})
    assert torch.equal(out["MuE"][2]["items"]["layers"], full["items"]["layers"])


def test_digit_tasks_with_given_digits_poses_the_same_strings_under_each_task():
    from companion.data.sequences import DIGIT_TASKS, digit_tasks

    digits = torch.randint(0, 10, (20, 4), generator=torch.Generator().manual_seed(0))
    copy = digit_tasks(20, 4, ("copy",), digits=digits)
    sort = digit_tasks(20, 4, ("sort",), digits=digits)
    assert torch.equal(copy[0][:, :4], digits) and torch.equal(sort[0][:, :4], digits)
    assert torch.equal(copy[1], digits) and torch.equal(sort[1], digits.sort(1).values)
    assert (sort[2] == DIGIT_TASKS.index("sort")).all()
    with pytest.raises(ValueError, match="digits"):
        digit_tasks(3, 4, digits=digits)
