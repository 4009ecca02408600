"""Tests of companion.models.seg: the shared QueryDecoder, hungarian_mask_loss and recall_at_iou."""

from __future__ import annotations

import torch

from companion.models.layers import attention_map_hook
from companion.models.seg import QueryDecoder, hungarian_mask_loss, recall_at_iou


def _disc_targets(n: int = 2, m: int = 3, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, M, size, size) bool square targets, the last slot of image 1 empty; valid (N, M)."""
    targets = torch.zeros(n, m, size, size, dtype=torch.bool)
    for i in range(n):
        for j in range(m):
            targets[i, j, 2 * j:2 * j + 2, i:i + 3] = True
    targets[1, -1] = False
    return targets, targets.flatten(2).any(-1)


def test_decoder_shapes_and_aux():
    torch.manual_seed(0)
    dec = QueryDecoder(dim=32, queries=5, layers=3, heads=4, pixel_dim=16)
    out = dec(torch.randn(2, 16, 8, 8))
    assert out["masks"].shape == (2, 5, 8, 8)
    assert out["objectness"].shape == (2, 5)
    assert out["embeds"].shape == (2, 5, 32)
    assert len(out["aux"]) == 3
    assert all(m.shape == (2, 5, 8, 8) and o.shape == (2, 5) for m, o in out["aux"])


def test_text_inject_and_mask_features_run_and_matter():
    torch.manual_seed(0)
    dec = QueryDecoder(dim=32, queries=4, layers=2, heads=4, pixel_dim=16, text_dim=12, inject_dim=8, mask_dim=6)
    pixel, text = torch.randn(3, 16, 4, 4), torch.randn(3, 5, 12)
    text_mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    inject, mask_features = torch.randn(3, 8, 4, 4), torch.randn(3, 6, 16, 16)
    out = dec(pixel, text=text, text_mask=text_mask, inject=inject, mask_features=mask_features)
    assert out["masks"].shape == (3, 4, 16, 16) and torch.isfinite(out["masks"]).all()
    # invalid text tokens are ignored; a row without valid text equals no text at all
    text2 = text.clone()
    text2[0, 2:] = torch.randn(3, 12)
    out2 = dec(pixel, text=text2, text_mask=text_mask, inject=inject, mask_features=mask_features)
    torch.testing.assert_close(out2["masks"][0], out["masks"][0])
    no_text = dec(pixel, inject=inject, mask_features=mask_features)
    torch.testing.assert_close(no_text["masks"][2], out["masks"][2])
    assert not torch.allclose(no_text["masks"][1], out["masks"][1])
    assert not torch.allclose(dec(pixel, text=text, text_mask=text_mask, inject=inject * 2,
                                  mask_features=mask_features)["masks"], out["masks"])


def test_masked_cross_attention_respects_previous_mask():
    """Each layer's pixel cross-attention puts weight only on the cells its query's previous mask holds above 0.5
    (everywhere when that mask is empty)."""
    torch.manual_seed(0)
    dec = QueryDecoder(dim=16, queries=3, layers=2, heads=2, pixel_dim=8)
    pixel = torch.randn(2, 8, 4, 4)
    maps = {}

    def keep(module, att):
        if module in (dec.layers[0].pixel_attn, dec.layers[1].pixel_attn):
            maps[module.layer_idx] = att

    with attention_map_hook(dec, keep):
        out = dec(pixel)
    for layer, (prev_masks, _) in enumerate(out["aux"]):
        allowed = prev_masks.sigmoid().flatten(2) >= 0.5  # (N, Q, 16)
        assert allowed.any() and not allowed.all()
        allowed = allowed | ~allowed.any(-1, keepdim=True)
        att = maps[layer]  # (N, H, Q, 16)
        assert att.masked_select(~allowed[:, None].expand_as(att)).abs().max() == 0
        torch.testing.assert_close(att.sum(-1), torch.ones(att.shape[:3]))


def test_hungarian_loss_low_for_perfect_predictions_and_permutation_invariant():
    targets, valid = _disc_targets()
    n, m = valid.shape
    q = 5
    masks = torch.full((n, q, 8, 8), -20.0)
    objectness = torch.full((n, q), -20.0)
    perm = torch.tensor([3, 0, 4])  # target j is predicted by query perm[j]
    for i in range(n):
        for j in range(m):
            if valid[i, j]:
                masks[i, perm[j]] = torch.where(targets[i, j], 20.0, -20.0)
                objectness[i, perm[j]] = 20.0
    perfect = hungarian_mask_loss(masks, objectness, targets, valid)
    assert perfect.item() < 1e-3
    shuffled = torch.randperm(q)
    again = hungarian_mask_loss(masks[:, shuffled], objectness[:, shuffled], targets, valid)
    torch.testing.assert_close(again, perfect)
    # random predictions cost more; the loss is permutation-invariant in the queries and differentiable
    torch.manual_seed(1)
    rand_m, rand_o = torch.randn(n, q, 8, 8, requires_grad=True), torch.randn(n, q, requires_grad=True)
    loss = hungarian_mask_loss(rand_m, rand_o, targets, valid)
    assert loss.item() > 0.5
    torch.testing.assert_close(hungarian_mask_loss(rand_m[:, shuffled], rand_o[:, shuffled], targets, valid), loss)
    loss.backward()
    assert rand_m.grad.abs().sum() > 0 and rand_o.grad.abs().sum() > 0


def test_hungarian_loss_no_targets_pushes_objectness_down():
    targets = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    valid = torch.zeros(1, 2, dtype=torch.bool)
    low = hungarian_mask_loss(torch.zeros(1, 3, 4, 4), torch.full((1, 3), -10.0), targets, valid)
    high = hungarian_mask_loss(torch.zeros(1, 3, 4, 4), torch.full((1, 3), 10.0), targets, valid)
    assert low.item() < 1e-3 < high.item()


def test_decoder_learns_to_fit_one_batch():
    torch.manual_seed(0)
    targets, valid = _disc_targets()
    pixel = torch.randn(2, 8, 8, 8)
    dec = QueryDecoder(dim=32, queries=4, layers=2, heads=4, pixel_dim=8)
    opt = torch.optim.Adam(dec.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        out = dec(pixel)
        loss = hungarian_mask_loss(out["masks"], out["objectness"], targets, valid)
        first = loss.item() if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_recall_at_iou_hand_example():
    targets = torch.zeros(1, 3, 4, 4, dtype=torch.bool)
    targets[0, 0, :2, :2] = True   # 4 cells
    targets[0, 1, 2:, 2:] = True   # 4 cells
    targets[0, 2, 0, 3] = True     # slot marked invalid below
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :3] = True     # IoU with target 0 = 4/6 ≈ 0.67
    masks[0, 1, 2:, 3] = True      # IoU with target 1 = 2/4 = 0.5
    masks[0, 1, 0, 3] = True       # IoU with target 1 = 2/5 = 0.4 after this cell
    valid = torch.tensor([[True, True, False]])
    assert recall_at_iou(masks, targets, valid).tolist() == [[True, False, False]]
    assert recall_at_iou(masks, targets, valid, threshold=0.4).tolist() == [[True, True, False]]
    assert recall_at_iou(masks, targets, valid, threshold=0.7).tolist() == [[False, False, False]]
