import pytest
import torch

from companion.data import refer
from companion.methods.parameter_masks import mask_tuning as mt
from companion.models.clip import ToyCLIP


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return ToyCLIP(len(refer.VOCAB), refer.CAPTION_LEN, depth=2).eval().requires_grad_(False)


@pytest.fixture(scope="module")
def data():
    base, _ = mt.base_new_split()
    return mt.object_images(2, base[:4], seed=3)


def test_split_is_a_balanced_half():
    base, new = mt.base_new_split()
    assert len(base) == len(new) == 12 and not set(base) & set(new)
    assert set(base) | set(new) == set(range(len(refer.CLASSES)))
    for half in (base, new):
        assert {refer.colour_of(c) for c in half} == set(range(len(refer.COLOURS)))
        assert {refer.shape_of(c) for c in half} == set(range(len(refer.SHAPES)))


def test_object_images_are_labelled_class_by_class():
    x, y = mt.object_images(3, (5, 2), seed=1)
    assert x.shape == (6, 3, 32, 32) and y.tolist() == [5, 5, 5, 2, 2, 2]
    x2, _ = mt.object_images(3, (5, 2), seed=1)
    assert torch.equal(x, x2)


def test_all_ones_masks_give_exactly_the_plain_forward(clip, data):
    x, _ = data
    for mlp in (False, True):
        model = mt.MaskedCLIP(clip, mt.text_embeddings(clip, range(4)), mt.image_tower_layers(clip, mlp=mlp))
        assert all(bool((m == 1).all()) for m in model.masks().values())
        with torch.no_grad():
            assert torch.equal(model.embed(x), clip.encode_image(x))
            assert torch.equal(model(x), clip.encode_image(x) @ model.text.T * clip.logit_scale.exp())
        assert model.masked_share()["all"] == 0.0
    # the clip's own forward is back after the masked one
    assert "forward" not in clip.image.blocks[0].attn.qkv.__dict__


def test_masked_layers_are_the_attention_projections(clip):
    names = mt.image_tower_layers(clip)
    assert list(names) == ["blocks.0.attn.qkv", "blocks.0.attn.proj", "blocks.1.attn.qkv", "blocks.1.attn.proj"]
    assert len(mt.image_tower_layers(clip, mlp=True)) == 8


def test_a_negative_logit_zeroes_that_weight(clip, data):
    x, _ = data
    model = mt.MaskedCLIP(clip, mt.text_embeddings(clip, range(4)), mt.image_tower_layers(clip))
    key = "blocks_0_attn_proj"
    with torch.no_grad():
        model.logits[key][:, 0] = -1.0
    layer = clip.image.blocks[0].attn.proj
    saved = layer.weight.clone()
    layer.weight[:, 0] = 0.0
    try:
        with torch.no_grad():
            expected = clip.encode_image(x)
    finally:
        layer.weight.copy_(saved)
    with torch.no_grad():
        assert torch.allclose(model.embed(x), expected, atol=1e-6)
    share = model.masked_share()
    assert share["blocks.0.attn.proj"] == pytest.approx(1 / 64)
    assert 0 < share["all"] < share["blocks.0.attn.proj"]


def test_only_mask_logits_receive_gradients(clip, data):
    x, y = data
    model = mt.MaskedCLIP(clip, mt.text_embeddings(clip, range(4)), mt.image_tower_layers(clip))
    torch.nn.functional.cross_entropy(model(x), y % 4).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.logits.values())
    assert all(p.grad is None for p in clip.parameters())


def test_gradient_dropout_rule():
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([1.0, -2.0, 0.5, -0.5])
    agree = a * 3  # same signs: P = 1, always kept
    assert torch.equal(mt.gradient_dropout(a, agree, generator=g), a)
    assert torch.equal(mt.gradient_dropout(a, -a * 1e9, lam=0.0, generator=g), a)  # lam = 0: never dropped
    # conflicting signs: kept with probability |a| / (|a| + |b|), else scaled by 1 - lam
    n = 200_000
    a = torch.full((n,), 1.0)
    b = torch.full((n,), -3.0)
    out = mt.gradient_dropout(a, b, lam=1.0, generator=g)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    assert out.mean().item() == pytest.approx(0.25, abs=0.005)
    half = mt.gradient_dropout(a, b, lam=0.5, generator=g)
    assert set(half.unique().tolist()) == {0.5, 1.0}


def test_gdr_objective_has_the_ce_value_and_the_dropped_gradient(clip, data):
    x, y = data
    text = mt.text_embeddings(clip, range(4))
    model = mt.MaskedCLIP(clip, text, mt.image_tower_layers(clip))
    with torch.no_grad():
        teacher = model(x)
    labels, idx = y % 4, torch.arange(len(x))
    plain = mt.MaskTuning(labels, teacher)(model, x, idx)
    params = list(model.logits.values())
    ce_grads = torch.autograd.grad(plain["loss"], params)
    # lam = 0: gradient dropout changes nothing, the gradient is the cross-entropy's
    out = mt.MaskTuning(labels, teacher, gdr=True, lam=0.0)(model, x, idx)
    assert out["loss"].item() == pytest.approx(plain["loss"].item(), abs=1e-6)
    for ga, gb in zip(torch.autograd.grad(out["loss"], params), ce_grads):
        assert torch.allclose(ga, gb, atol=1e-7)
    # lam = 1: every entry is either the cross-entropy gradient or zero
    out = mt.MaskTuning(labels, teacher, gdr=True, lam=1.0, seed=1)(model, x, idx)
    for ga, gb in zip(torch.autograd.grad(out["loss"], params), ce_grads):
        assert bool(((ga == 0) | torch.isclose(ga, gb, atol=1e-7)).all())
    assert 0.0 < out["kept"] <= 1.0


def test_distill_loss_is_kl_up_to_a_constant():
    torch.manual_seed(0)
    s, t = torch.randn(5, 4, requires_grad=True), torch.randn(5, 4)
    kl = torch.nn.functional.kl_div(s.log_softmax(1), t.softmax(1), reduction="batchmean")
    g1 = torch.autograd.grad(mt.distill_loss(s, t), s)[0]
    g2 = torch.autograd.grad(kl, s)[0]
    assert torch.allclose(g1, g2, atol=1e-6)


def test_prompt_learner_trains_only_its_context(clip):
    learner = mt.PromptLearner(clip, n_ctx=3)
    emb = learner(range(4))
    assert emb.shape == (4, 64)
    assert torch.allclose(emb.norm(dim=1), torch.ones(4), atol=1e-5)
    emb.sum().backward()
    assert learner.ctx.grad is not None and learner.ctx.grad.abs().sum() > 0
    assert [n for n, p in learner.named_parameters() if p.requires_grad] == ["ctx"]


def test_seed_spread_interval_and_harmonic_mean():
    b = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    m = torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0]])  # seed gains +0.5 and -0.25
    assert mt.seed_spread_interval(b, m, (0.0, 0.2)) == (-0.25, 0.5)
    assert mt.seed_spread_interval(b, m, (-1.0, 1.0)) == (-1.0, 1.0)
    assert mt.harmonic_mean(0.5, 0.5) == pytest.approx(0.5)
    assert mt.harmonic_mean(0.0, 0.0) == 0.0
