"""Tests of companion.models.layers (one Attention, MLP, Block, PatchEmbed, KVCache) and proof that the models
built on them compute what they computed before.

Bool attention masks: True = may attend. The frozen reference is the models' source at ``REFERENCE_COMMIT``
(before they shared these layers), read with ``git show`` and imported as a separate package: under the same
seed the old and new models draw the same weights (parameter names mapped), leave the RNG in the same state,
and give the same outputs in every mode the notebooks use.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from companion.masks.attention import causal_mask, sliding_window_bias_fn, sliding_window_mask
from companion.models import GPT, MAE, GPTConfig, MAEConfig, Seq2Seq, Seq2SeqConfig, VideoMAE, ViT, ViTConfig
from companion.models.layers import MLP, Attention, Block, KVCache, PatchEmbed, attention_map_hook

ATOL = 1e-6


def reference_attention(x, context, wq, bq, wk, bk, wv, bv, wo, bo, heads, allowed=None):
    """softmax(q·kᵀ/√hd, restricted to ``allowed``)·v, then the output projection, one head at a time."""
    n, length, d = x.shape
    hd = d // heads
    q, k, v = F.linear(x, wq, bq), F.linear(context, wk, bk), F.linear(context, wv, bv)
    outs = []
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / hd**0.5  # (N, L, K)
        if allowed is not None:
            scores = scores.masked_fill(~allowed, float("-inf"))
        outs.append(scores.softmax(-1) @ v[..., sl])
    return F.linear(torch.cat(outs, dim=-1), wo, bo)


def self_reference(attn: Attention, x, allowed=None):
    wq, wk, wv = attn.qkv.weight.chunk(3)
    bq, bk, bv = attn.qkv.bias.chunk(3)
    return reference_attention(x, x, wq, bq, wk, bk, wv, bv, attn.proj.weight, attn.proj.bias, attn.heads, allowed)


def _x(n=2, length=6, d=16, seed=0):
    return torch.randn(n, length, d, generator=torch.Generator().manual_seed(seed))


# ---- Attention ---------------------------------------------------------------------------------------------------

@torch.no_grad()
@pytest.mark.parametrize("return_attention", [False, True])
def test_self_attention_is_softmax_of_scaled_scores_with_the_bool_mask_true_may_attend(return_attention):
    torch.manual_seed(0)
    attn, x = Attention(16, 4).eval(), _x()
    allowed = torch.rand(2, 1, 6, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    allowed |= torch.eye(6, dtype=torch.bool)  # every query keeps a key
    y, att = attn(x, mask=allowed, return_attention=return_attention)
    assert torch.allclose(y, self_reference(attn, x, allowed[:, 0]), atol=ATOL)
    assert (att is not None) == return_attention
    if return_attention:
        assert att.shape == (2, 4, 6, 6) and torch.allclose(att.sum(-1), torch.ones(2, 4, 6), atol=ATOL)
        assert (att[~allowed.expand(2, 4, 6, 6)] == 0).all()


@torch.no_grad()
def test_bool_mask_float_bias_and_is_causal_are_the_same_mask():
    torch.manual_seed(0)
    attn, x = Attention(16, 2).eval(), _x()
    allowed = causal_mask(6)
    bias = torch.zeros(6, 6).masked_fill(~allowed, float("-inf"))
    reference = self_reference(attn, x, allowed)
    for kw in (dict(mask=allowed), dict(mask=bias), dict(is_causal=True)):
        for return_attention in (False, True):
            assert torch.allclose(attn(x, return_attention=return_attention, **kw)[0], reference, atol=ATOL)


@torch.no_grad()
def test_causal_queries_are_the_last_positions_with_a_kv_cache():
    torch.manual_seed(0)
    attn, x = Attention(16, 2, layer_idx=1).eval(), _x(length=7)
    full = attn(x, is_causal=True)[0]
    cache = KVCache(n_layer=2)
    first = attn(x[:, :4], is_causal=True, cache=cache)[0]
    rest = attn(x[:, 4:], is_causal=True, cache=cache)[0]  # 3 queries, 7 keys: bottom-right causal
    assert torch.allclose(torch.cat([first, rest], 1), full, atol=ATOL)
    assert cache.k[1].shape == (2, 2, 7, 8) and cache.k[0] is None


@torch.no_grad()
def test_cross_attention_reads_keys_and_values_from_the_context():
    torch.manual_seed(0)
    attn, x, context = Attention(16, 4, cross=True).eval(), _x(length=3), _x(length=5, seed=1)
    padding = torch.tensor([[True] * 5, [True, True, True, False, False]])[:, None, None, :]  # (N,1,1,S)
    y, att = attn(x, context, mask=padding, return_attention=True)
    wk, wv = attn.kv.weight.chunk(2)
    bk, bv = attn.kv.bias.chunk(2)
    expected = reference_attention(x, context, attn.q.weight, attn.q.bias, wk, bk, wv, bv, attn.proj.weight,
                                   attn.proj.bias, 4, padding[:, 0])
    assert att.shape == (2, 4, 3, 5) and (att[1, ..., 3:] == 0).all()
    assert torch.allclose(y, expected, atol=ATOL)
    assert torch.allclose(attn(x, context, mask=padding)[0], expected, atol=ATOL)  # the fused kernel
    with pytest.raises(ValueError, match="context"):
        attn(x)
    with pytest.raises(ValueError, match="context"):
        Attention(16, 4)(x, context)


@torch.no_grad()
def test_qkv_hook_sees_q_k_v_and_its_mask_combines_with_the_causal_one():
    torch.manual_seed(0)
    attn, x = Attention(16, 2, layer_idx=3).eval(), _x()
    seen = {}

    def hook(layer_idx, q, k, v):
        seen.update(layer=layer_idx, shapes=(q.shape, k.shape, v.shape))
        return sliding_window_mask(q.shape[2], 2, k.shape[2])  # bool, True = may attend

    y = attn(x, is_causal=True, qkv_fn=hook)[0]
    assert seen == {"layer": 3, "shapes": ((2, 2, 6, 8),) * 3}
    assert torch.allclose(y, self_reference(attn, x, sliding_window_mask(6, 2)), atol=ATOL)
    wide = lambda layer_idx, q, k, v: torch.zeros(q.shape[2], k.shape[2])  # a zero float bias: causal only
    assert torch.allclose(attn(x, is_causal=True, qkv_fn=wide)[0], attn(x, is_causal=True)[0], atol=ATOL)


@torch.no_grad()
def test_attention_map_hook_reads_and_replaces_maps_and_is_removed_afterwards():
    torch.manual_seed(0)
    blocks, x = nn.ModuleList([Block(16, 2, layer_idx=0), Block(16, 2, layer_idx=1)]).eval(), _x()

    def run():
        h = x
        for blk in blocks:
            h = blk(h)[0]
        return h

    plain, maps = run(), {}
    with attention_map_hook(blocks, lambda module, att: maps.__setitem__(module.layer_idx, att)):  # None: read only
        read = run()
    assert torch.allclose(read, plain, atol=ATOL) and set(maps) == {0, 1}
    assert torch.allclose(maps[0], blocks[0].attn(blocks[0].norm1(x), return_attention=True)[1], atol=ATOL)

    uniform = lambda module, att: torch.full_like(att, 1.0 / att.shape[-1])  # every query averages all values
    attn = blocks[0].attn
    with attention_map_hook(blocks, uniform):
        y, att = attn(x, return_attention=True)
    v = attn.qkv(x).chunk(3, dim=-1)[2]
    assert torch.allclose(y, attn.proj(v.mean(1, keepdim=True)).expand_as(y), atol=ATOL)
    assert torch.allclose(att, torch.full_like(att, 1 / 6))  # the map returned is the replaced one
    assert all(blk.attn.map_fn is None for blk in blocks) and torch.allclose(run(), plain)


def test_attention_rejects_a_width_that_heads_do_not_divide():
    with pytest.raises(ValueError, match="divisible"):
        Attention(10, 4)


# ---- MLP, Block, PatchEmbed ----------------------------------------------------------------------------------------

def test_mlp_is_linear_gelu_linear_and_block_is_pre_norm_residual():
    torch.manual_seed(0)
    mlp, x = MLP(16, mlp_ratio=2.5), _x()
    assert mlp.fc1.out_features == 40
    assert torch.allclose(mlp(x), mlp.fc2(F.gelu(mlp.fc1(x))), atol=ATOL)
    block = Block(16, 4, mlp_ratio=2.0).eval()
    h = x + block.attn(block.norm1(x))[0]
    assert torch.allclose(block(x)[0], h + block.mlp(block.norm2(h)), atol=ATOL)


def test_patch_embed_orders_patches_row_major_and_tubes_time_first():
    torch.manual_seed(0)
    embed = PatchEmbed(4, 3, 8)
    img = torch.randn(2, 3, 8, 12)
    tokens = embed(img)
    assert tokens.shape == (2, 6, 8)
    patch = img[:, :, 4:8, 8:12]  # row 1, column 2 of a 2×3 grid
    assert torch.allclose(tokens[:, 1 * 3 + 2], F.linear(patch.flatten(1), embed.proj.weight.flatten(1),
                                                         embed.proj.bias), atol=1e-5)
    tube = PatchEmbed(4, 3, 8, tubelet=2)
    clip = torch.randn(2, 3, 4, 8, 8)
    tokens = tube(clip)
    assert tokens.shape == (2, 2 * 2 * 2, 8)
    t, r, c = 1, 0, 1  # second tube in time, first row, second column
    cube = clip[:, :, 2:4, 0:4, 4:8]
    assert torch.allclose(tokens[:, t * 4 + r * 2 + c], F.linear(cube.flatten(1), tube.proj.weight.flatten(1),
                                                                 tube.proj.bias), atol=1e-5)


# ---- the models against their source before the shared layers ------------------------------------------------------

REFERENCE_COMMIT = "c6fe9770292822d1c224f465aec3ed5dd7a271a7"
OLD_FILES = ("vit", "gpt", "mae", "video_mae", "seq2seq")

# old parameter name → new (the models' own parameters keep their names)
RENAMES = [
    (r"^patch_embed\.", "patch_embed.proj."),
    (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."), (r"\.ln_cross\.", ".norm_cross."),
    (r"\.attn\.c_attn\.", ".attn.qkv."), (r"\.attn\.c_proj\.", ".attn.proj."), (r"\.cross\.c_proj\.", ".cross.proj."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."), (r"\.mlp\.0\.", ".mlp.fc1."),
    (r"\.mlp\.2\.", ".mlp.fc2."),
]


def new_name(old: str) -> str:
    for pattern, repl in RENAMES:
        old = re.sub(pattern, repl, old)
    return old


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """The package ``companion.models`` as it was at REFERENCE_COMMIT (its own copies of attention)."""
    root = Path(__file__).resolve().parent.parent
    sources = {}
    for name in OLD_FILES:
        try:
            sources[name] = subprocess.run(["git", "-C", str(root), "show", f"{REFERENCE_COMMIT}:companion/models/{name}.py"],
                                           capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            pytest.skip(f"the reference commit {REFERENCE_COMMIT[:7]} is not in this clone (git history needed)")
    package = "reference_models_" + REFERENCE_COMMIT[:7]
    directory = tmp_path_factory.mktemp("reference") / package
    directory.mkdir()
    (directory / "__init__.py").write_text("")
    for name, text in sources.items():  # the old modules import masks from the package: use today's
        (directory / f"{name}.py").write_text(text.replace("from ..masks", "from companion.masks"))
    sys.path.insert(0, str(directory.parent))
    try:
        yield {name: importlib.import_module(f"{package}.{name}") for name in OLD_FILES}
    finally:
        sys.path.remove(str(directory.parent))
        for mod in [m for m in sys.modules if m.startswith(package)]:
            del sys.modules[mod]


def build_both(make_old, make_new, seed=0):
    """Build the old and the new model from the same seed; check they drew the same weights (and nothing else)."""
    torch.manual_seed(seed)
    a = make_old()
    after_old = torch.rand(4)
    torch.manual_seed(seed)
    b = make_new()
    after_new = torch.rand(4)
    assert torch.equal(after_old, after_new), "building the model consumed the RNG differently"
    old_state = {new_name(k): v for k, v in a.state_dict().items()}
    new_state = b.state_dict()
    assert set(old_state) == set(new_state), sorted(set(old_state) ^ set(new_state))
    for k, v in new_state.items():
        assert torch.equal(v, old_state[k]), k
    return a.eval(), b.eval()


def close(a, b, atol=ATOL):
    """Equal nested outputs (tensors, lists, tuples, dicts; None where None)."""
    if isinstance(a, torch.Tensor):
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.allclose(a, b, atol=atol, rtol=0), (a - b).abs().max().item()
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            close(x, y, atol)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            close(a[k], b[k], atol)
    else:
        assert a == b


@torch.no_grad()
def test_vit_matches_the_reference(old):
    cfg = dict(image_size=16, patch_size=4, in_channels=3, num_classes=5, dim=32, depth=3, heads=4, mlp_ratio=2.0)
    a, b = build_both(lambda: old["vit"].ViT(old["vit"].ViTConfig(**cfg)), lambda: ViT(ViTConfig(**cfg)))
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    pixel_keep = (torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(2)) > 0.2).float()
    keep_tokens = a.token_keep(pixel_keep)
    close(a(x), b(x))
    close(a.forward_masked(x, pixel_keep), b.forward_masked(x, pixel_keep))
    close(a.forward_features(x, return_attention=True), b.forward_features(x, return_attention=True))
    close(a.forward_features(x, keep_tokens, return_attention=True),
          b.forward_features(x, keep_tokens, return_attention=True))


@torch.no_grad()
@pytest.mark.parametrize("mode,loss_predictor", [("mae", False), ("mae", True), ("simmim", False)])
def test_mae_matches_the_reference(old, mode, loss_predictor):
    cfg = dict(image_size=16, patch_size=4, dim=32, depth=2, heads=4, decoder_dim=16, decoder_depth=2,
               decoder_heads=2, mode=mode, loss_predictor=loss_predictor)
    a, b = build_both(lambda: old["mae"].MAE(old["mae"].MAEConfig(**cfg)), lambda: MAE(MAEConfig(**cfg)))
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    close(a(x, 0.75, generator=torch.Generator().manual_seed(2)), b(x, 0.75, generator=torch.Generator().manual_seed(2)))
    visible = a.random_masking(torch.zeros(4, 16, 1), 0.5, torch.Generator().manual_seed(3))[1]
    ea = a.forward_encoder(x, visible, return_hidden=True, return_attention=True)
    eb = b.forward_encoder(x, visible, return_hidden=True, return_attention=True)
    close(tuple(ea), tuple(eb))
    close(a.forward_decoder(ea.latent, ea.ids_restore), b.forward_decoder(eb.latent, eb.ids_restore))
    if loss_predictor:
        close(a.forward_loss_predictor(ea.latent, ea.ids_restore), b.forward_loss_predictor(eb.latent, eb.ids_restore))


@torch.no_grad()
def test_video_mae_matches_the_reference(old):
    cfg = dict(image_size=8, patch_size=4, frames=4, tubelet=2, dim=16, depth=2, heads=2, decoder_dim=16,
               decoder_depth=1, decoder_heads=2)
    vm = old["video_mae"]
    a, b = build_both(lambda: vm.VideoMAE(vm.VideoMAEConfig(**cfg)), lambda: VideoMAE(**cfg))
    clips = torch.rand(2, 3, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    close(a(clips, 0.5, generator=torch.Generator().manual_seed(2)), b(clips, 0.5, generator=torch.Generator().manual_seed(2)))


def _gpt_pair(old, hook=None, **kw):
    cfg = dict(vocab_size=20, block_size=32, n_layer=3, n_head=2, n_embd=32)
    cfg.update(kw)
    g = old["gpt"]
    make_hook = hook or (lambda: None)
    return build_both(lambda: g.GPT(g.GPTConfig(**cfg), attn_qkv_fn=make_hook()),
                      lambda: GPT(GPTConfig(**cfg), attn_qkv_fn=make_hook()))


def _tokens(n=3, t=12, seed=1):
    return torch.randint(0, 20, (n, t), generator=torch.Generator().manual_seed(seed))


def _window_qkv(layer_idx, q, k, v):
    return sliding_window_mask(q.shape[2], 3 + layer_idx, k.shape[2])


def _float_bias(layer_idx, q_len, k_len):
    return -0.3 * (torch.arange(k_len)[None, :] - torch.arange(k_len - q_len, k_len)[:, None]).abs().float()


@torch.no_grad()
@pytest.mark.parametrize("kw", [{}, {"causal": False}, {"token_shift": True}, {"n_head": 4}])
def test_gpt_matches_the_reference(old, kw):
    a, b = _gpt_pair(old, **kw)
    x = _tokens()
    skip = torch.tensor([[False, True, False], [True, True, True], [False, False, True]])
    close(a(x), b(x))
    close(a(x, return_all_logits=True, capture=True), b(x, return_all_logits=True, capture=True))
    close(a(x, skip=skip, capture=True), b(x, skip=skip, capture=True))
    for bias_fn in (sliding_window_bias_fn(4), _float_bias):
        close(a(x, attn_bias_fn=bias_fn, capture=True), b(x, attn_bias_fn=bias_fn, capture=True))
        close(a(x, attn_bias_fn=bias_fn, attn_qkv_fn=_window_qkv), b(x, attn_bias_fn=bias_fn, attn_qkv_fn=_window_qkv))
    close(a(x, attn_qkv_fn=_window_qkv, capture=True), b(x, attn_qkv_fn=_window_qkv, capture=True))


@torch.no_grad()
@pytest.mark.parametrize("token_shift", [False, True])
def test_gpt_kv_cache_and_generation_match_the_reference(old, token_shift):
    a, b = _gpt_pair(old, token_shift=token_shift)
    x = _tokens(t=8)
    skip = torch.tensor([[False, True, False], [False, False, False], [True, False, True]])
    ca, cb = old["gpt"].KVCache(3), KVCache(3)
    close(a(x[:, :5], skip=skip, cache=ca, capture=True), b(x[:, :5], skip=skip, cache=cb, capture=True))
    for t in range(5, 8):
        close(a(x[:, t:t + 1], skip=skip, cache=ca, attn_bias_fn=sliding_window_bias_fn(3), capture=True),
              b(x[:, t:t + 1], skip=skip, cache=cb, attn_bias_fn=sliding_window_bias_fn(3), capture=True))
    close(ca.valid, cb.valid)
    for use_cache in (True, False):
        assert torch.equal(a.generate(x[:, :4], 6, skip=skip, use_cache=use_cache),
                           b.generate(x[:, :4], 6, skip=skip, use_cache=use_cache))


def test_gpt_with_dropout_and_a_dynamic_mask_matches_the_reference_in_training(old):
    from companion.methods.sequence.dma import DynamicMask

    a, b = _gpt_pair(old, hook=lambda: DynamicMask(3, 32, 2, 4), dropout=0.1)
    a.train(), b.train()
    x = _tokens()
    outs = []
    for model in (a, b):
        torch.manual_seed(5)  # the same dropout draws, in the same order
        logits = model(x)
        logits.pow(2).mean().backward()
        outs.append((logits, {new_name(n): p.grad for n, p in model.named_parameters()}))
    close(outs[0][0], outs[1][0])
    close(outs[0][1], outs[1][1])


@torch.no_grad()
def test_seq2seq_matches_the_reference(old):
    cfg = dict(vocab_size=12, src_len=8, tgt_len=8, n_enc=2, n_dec=3, n_head=2, n_embd=32)
    s = old["seq2seq"]
    a, b = build_both(lambda: s.Seq2Seq(s.Seq2SeqConfig(**cfg)), lambda: Seq2Seq(Seq2SeqConfig(**cfg)))
    src, tgt = _tokens(t=8) % 12, _tokens(t=6, seed=2) % 12
    close(a(src, tgt), b(src, tgt))
    close(a(src, tgt, return_all_logits=True), b(src, tgt, return_all_logits=True))
    close(a.encode(src, n_layers=1), b.encode(src, n_layers=1))
    memory = a.memory(a.encode(src)[-1])
    close(a.decode(tgt, memory, n_layers=2), b.decode(tgt, memory, n_layers=2))
    ca, cb = old["gpt"].KVCache(3), KVCache(3)  # step-by-step decoding as in MuE's early exit
    for t in range(tgt.shape[1]):
        xa = xb = a.embed_tgt(tgt[:, t:t + 1], start=t)
        for i in range(3):
            xa, xb = a.decoder[i](xa, memory, ca), b.decoder[i](xb, memory, cb)
            close(xa, xb)
        ca.length += 1
        cb.length += 1
