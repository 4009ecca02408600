"""The toy CLIP: shapes, unit norms, order-free text pooling, and the symmetric contrastive loss."""

import math

import torch

from companion.data import refer
from companion.models.clip import ToyCLIP, clip_loss


def _model():
    torch.manual_seed(0)
    return ToyCLIP(len(refer.VOCAB), refer.CAPTION_LEN, dim=32, depth=2, text_layers=1, heads=2)


def test_embeddings_are_unit_norm_and_dense_features_lie_on_the_patch_grid():
    m = _model()
    s = refer.make_refer_scenes(4, seed=0)
    img, txt = m.encode_image(s.images), m.encode_text(s.captions)
    assert img.shape == txt.shape == (4, 32)
    assert torch.allclose(img.norm(dim=1), torch.ones(4)) and torch.allclose(txt.norm(dim=1), torch.ones(4))
    assert m.dense_features(s.images).shape == (4, 32, 8, 8)


def test_text_pooling_ignores_padding_and_word_order_without_positions():
    m = _model()
    ids = refer.words.encode(["red circle blue square"], refer.VOCAB, refer.CAPTION_LEN)
    padded = torch.cat([ids[:, :4], torch.zeros(1, 8, dtype=torch.long)], dim=1)
    assert torch.allclose(m.encode_text(ids), m.encode_text(padded))
    with torch.no_grad():
        m.text.wpe.weight.zero_()  # with no position signal the bidirectional tower sees a set of words
    swapped = refer.words.encode(["blue square red circle"], refer.VOCAB, refer.CAPTION_LEN)
    assert torch.allclose(m.encode_text(ids), m.encode_text(swapped), atol=1e-5)


def test_clip_loss_is_log_n_for_uninformative_embeddings_and_small_for_matching_ones():
    n = 8
    same = torch.nn.functional.normalize(torch.ones(n, 4), dim=1)
    assert math.isclose(float(clip_loss(same, same, torch.tensor(0.0))), math.log(n), rel_tol=1e-5)
    eye = torch.eye(n)
    assert float(clip_loss(eye, eye, torch.tensor(math.log(100.0)))) < 1e-3
    assert float(clip_loss(eye, eye.roll(1, 0), torch.tensor(math.log(100.0)))) > 10


def test_classifier_embeds_class_names_like_encode_text():
    m = _model()
    ids = refer.words.encode(list(refer.CLASSES[:3]), refer.VOCAB, refer.CAPTION_LEN)
    assert torch.allclose(m.classifier(refer.CLASSES[:3]), m.encode_text(ids))


def test_toy_mllm_puts_image_tokens_first_and_its_head_reads_the_vocabulary():
    from companion.models.mllm import ToyMLLM, image_tokens

    torch.manual_seed(0)
    vocab = refer.VOCAB + ("<seg>",)
    m = ToyMLLM(vocab, image_dim=8, max_len=32, n_layer=1, dim=16)
    dense = torch.randn(2, 8, 8, 8)
    tokens = image_tokens(dense, 4)
    assert tokens.shape == (2, 16, 8)
    assert torch.allclose(tokens[:, 0], dense[:, :, :2, :2].mean((2, 3)))  # row-major area pooling
    ids = refer.words.encode(["red circle <seg>"] * 2, vocab, 3)
    embeds = m.embed(tokens, ids)
    assert embeds.shape == (2, 19, 16)
    assert torch.allclose(embeds[:, 16:], m.gpt.wte(ids))
    hidden = m(embeds)
    assert hidden.shape == (2, 19, 16) and m.logits(hidden).shape == (2, 19, len(vocab))
    # causal: the image tokens' states do not depend on the text after them
    other = m.embed(tokens, refer.words.encode(["blue square <seg>"] * 2, vocab, 3))
    assert torch.allclose(m(other)[:, :16], hidden[:, :16], atol=1e-6)
