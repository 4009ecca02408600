"""STAMP's pieces: the hybrid attention mask, one-pass vs cached autoregressive decoding, patch labels, toy QA."""

import torch

from companion.data import refer, words
from companion.methods.segmentation import stamp


def _inputs(n=3, image_len=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.randn(n, image_len, 64, generator=g)
    patches = torch.randn(n, 64, 64, generator=g)
    text = words.encode(["red circle", "all blue", "circle left of red square"][:n], stamp.VOCAB, stamp.TEXT_LEN)
    return image, patches, text


def test_mask_tokens_see_prefix_and_each_other_text_never_sees_mask_tokens():
    prefix, n_mask = 7, 5
    allowed = stamp.stamp_attention(prefix, n_mask)(0, prefix + n_mask, prefix + n_mask)
    assert allowed.dtype == torch.bool and allowed.shape == (12, 12)
    assert allowed[prefix:, :].all()  # mask tokens: every prefix position and every mask token
    assert not allowed[:prefix, prefix:].any()  # text never sees mask tokens
    assert torch.equal(allowed[:prefix, :prefix], torch.ones(prefix, prefix).tril().bool())  # prefix causal
    # with a KV cache (the prefix already cached): the mask-token queries are the last rows
    cached = stamp.stamp_attention(prefix, n_mask)(1, n_mask, prefix + n_mask)
    assert cached.shape == (n_mask, prefix + n_mask) and cached.all()


def test_text_states_do_not_depend_on_mask_tokens():
    torch.manual_seed(0)
    model = stamp.Grounder(image_len=4).eval()
    image, patches, text = _inputs()
    seg = torch.full((3,), stamp.VOCAB.index(stamp.SEG))
    prefix = model.prefix(image, text, seg)
    with torch.no_grad():
        alone = model.mllm(prefix, attn_bias_fn=stamp.causal_attention)
        masks = model.mask_embed + model.mllm.image_proj(patches)
        hybrid = stamp.stamp_attention(model.prefix_len, 64)
        full = model.mllm(torch.cat([prefix, masks], 1), attn_bias_fn=hybrid)
        other = model.mllm(torch.cat([prefix, masks.flip(1) * 3], 1), attn_bias_fn=hybrid)
    assert torch.allclose(full[:, :model.prefix_len], alone, atol=1e-5)
    assert torch.allclose(other[:, :model.prefix_len], alone, atol=1e-5)
    assert not torch.allclose(full[:, model.prefix_len:], other[:, model.prefix_len:])  # masks see each other


def test_one_pass_vs_cached_autoregressive_decoding():
    torch.manual_seed(1)
    model = stamp.Grounder(image_len=4).eval()
    with torch.no_grad():
        model.mllm.gpt.wte.weight[stamp.VOCAB.index(stamp.FG)] += 0.5  # some foreground in the greedy labels
    image, patches, text = _inputs()
    one, passes = stamp.stamp_decode(model, image, patches, text)
    assert one.shape == (3, 64) and one.dtype == torch.bool and passes == 1
    seq, passes = stamp.ar_decode(model, image, patches, text)
    assert seq.shape == (3, 64) and passes == 64
    # the cached decoder agrees with a teacher-forced pass over its own labels (the cache changes nothing)
    with torch.no_grad():
        logits = stamp.ar_forward(model, image, patches, text, seq)[1]
    fg = logits[..., stamp.VOCAB.index(stamp.FG)] > logits[..., stamp.VOCAB.index(stamp.BG)]
    assert torch.equal(fg, seq)


def test_patch_labels_threshold_and_layout():
    targets = torch.zeros(2, 32, 32, dtype=torch.bool)
    targets[0, :4, 4:8] = True  # patch (0, 1) fully
    targets[1, 4:6, :4] = True  # half of patch (1, 0)
    labels = stamp.patch_labels(targets, 8, 0.25)
    assert labels.shape == (2, 64)
    assert labels[0].nonzero().flatten().tolist() == [1]
    assert labels[1].nonzero().flatten().tolist() == [8]
    assert not stamp.patch_labels(targets, 8, 0.75)[1].any()


def test_questions_answers_match_the_scenes():
    scenes = refer.make_refer_scenes(40, seed=5)
    text, answer, kind = stamp.questions(scenes, seed=6)
    assert text.shape == (40, stamp.TEXT_LEN) and answer.shape == kind.shape == (40,)
    for i in range(40):
        q = words.decode(text[i], stamp.VOCAB).split()
        named = scenes.labels[i][scenes.labels[i] >= 0]
        a = stamp.VOCAB[answer[i]]
        if q[:2] == ["how", "many"]:
            if q[2] in refer.COLOURS:
                n = int((refer.colour_of(named) == list(refer.COLOURS).index(q[2])).sum())
            else:
                n = int((refer.shape_of(named) == list(refer.SHAPES).index(q[2])).sum())
            assert a == stamp.NUMBERS[n]
        else:
            c = refer.CLASSES.index(" ".join(q[3:]))
            assert a == ("yes" if bool((named == c).any()) else "no")


def test_dice_bce_prefers_the_right_mask():
    labels = torch.zeros(2, 64, dtype=torch.bool)
    labels[:, :5] = True
    right = torch.where(labels, 6.0, -6.0)
    assert stamp.dice_bce(right, labels) < stamp.dice_bce(-right, labels)


def test_losses_of_the_three_modes():
    torch.manual_seed(0)
    image, patches, text = _inputs()
    labels = torch.zeros(3, 64, dtype=torch.bool)
    labels[:, 10:14] = True
    data = stamp.Episodes(image, patches, text, labels, text, torch.tensor([stamp.VOCAB.index("yes")] * 3))
    for mode in ("qa", "stamp", "ar"):
        model = stamp.Grounder(image_len=4)
        out = stamp.loss_fn(mode, data)(model, torch.arange(3), None)
        out["loss"].backward()
        assert torch.isfinite(out["loss"])
        used = model.patch_head.weight.grad is not None
        assert used == (mode == "stamp")  # only STAMP trains the patch classifier
