"""Tests of companion.methods.segmentation.pmp (Prompt-guided Mask Proposal at toy scale)."""

from __future__ import annotations

import torch

from companion.data import refer
from companion.methods.segmentation import pmp
from companion.models.seg import deep_set_loss


def test_draw_prompts_present_then_absent():
    scenes = refer.make_refer_scenes(40, seed=3, classes=refer.SEEN)
    g = torch.Generator().manual_seed(0)
    prompts = pmp.draw_prompts(scenes.labels, g, present=2, absent=1, pool=refer.SEEN)
    assert prompts.shape == (40, 3)
    for row, labels in zip(prompts, scenes.labels):
        there = set(labels[labels >= 0].tolist())
        present = [c for c in row[:2].tolist() if c != refer.NONE]
        assert 1 <= len(present) <= 2 and set(present) <= there and len(set(present)) == len(present)
        assert row[2].item() not in there and row[2].item() in refer.SEEN
    again = pmp.draw_prompts(scenes.labels, torch.Generator().manual_seed(0), pool=refer.SEEN)
    assert torch.equal(prompts, again)


def test_prompted_slots_and_tokens():
    labels = torch.tensor([[3, 5, 3, refer.NONE, refer.CLUTTER_LABEL]])
    prompts = torch.tensor([[3, refer.NONE, 7]])
    assert pmp.prompted_slots(labels, prompts).tolist() == [[True, False, True, False, False]]
    class_text = torch.randn(24, 8)
    tokens, valid = pmp.prompt_tokens(class_text, prompts)
    assert valid.tolist() == [[True, False, True]]
    torch.testing.assert_close(tokens[0, 0], class_text[3])
    assert tokens[0, 1].abs().sum() == 0


def test_segmenter_shapes_and_text_option():
    torch.manual_seed(0)
    pixel, images, text = torch.randn(2, 64, 8, 8), torch.rand(2, 3, 32, 32), torch.randn(2, 3, 64)
    mask = torch.tensor([[True, True, False], [True, False, False]])
    with_text = pmp.PromptedSegmenter(4, text=True, layers=2)
    out = with_text(pixel, images, text, mask)
    assert out["masks"].shape == (2, 4, 32, 32) and out["objectness"].shape == (2, 4)
    assert len(out["aux"]) == 2 and out["aux"][0][0].shape == (2, 4, 32, 32)
    assert not torch.allclose(with_text(pixel, images, text * 2, mask)["masks"], out["masks"])
    plain = pmp.PromptedSegmenter(4, text=False, layers=2)
    torch.testing.assert_close(plain(pixel, images, text, mask)["masks"], plain(pixel, images)["masks"])


def test_set_loss_low_for_perfect_predictions():
    scenes = refer.make_refer_scenes(3, seed=1)
    valid = scenes.labels >= 0
    q = scenes.instances.shape[1]
    masks = torch.where(scenes.instances, 20.0, -20.0)
    obj = torch.where(valid, 20.0, -20.0)
    out = {"masks": masks, "objectness": obj, "aux": [(masks, obj)]}
    assert deep_set_loss(out, scenes.instances, valid).item() < 1e-3
    bad = {"masks": -masks, "objectness": obj, "aux": []}
    assert deep_set_loss(bad, scenes.instances, valid).item() > 1.0
    assert q == masks.shape[1]


def test_proposals_grid_and_classify():
    out = {"masks": torch.tensor([[[[1.0, -1.0]], [[-1.0, -1.0]], [[2.0, 2.0]]]]),
           "objectness": torch.tensor([[3.0, 3.0, -3.0]])}
    masks, keep = pmp.proposals(out)
    assert masks.shape == (1, 3, 1, 2) and keep.tolist() == [[True, False, False]]
    grid = pmp.grid_proposals(2, 4)
    assert grid.shape == (2, 16, 32, 32) and grid[0].sum(0).eq(1).all()
    dense = torch.zeros(1, 2, 2, 2)
    dense[0, 0, 0, 0] = 1.0  # cell (0, 0) points to class 0, cell (1, 1) to class 1
    dense[0, 1, 1, 1] = 1.0
    m = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    m[0, 0, :2, :2] = True
    m[0, 1, 2:, 2:] = True
    assert pmp.classify(dense, m, torch.eye(2)).tolist() == [[0, 1]]


def test_prompt_ious_hand_example():
    instances = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    instances[0, 0, :2, :2] = True  # class 5, 4 cells
    instances[0, 1, 2:, :] = True   # class 7, 8 cells
    labels = torch.tensor([[5, 7]])
    masks = torch.zeros(1, 2, 4, 4, dtype=torch.bool)
    masks[0, 0, :2, :3] = True      # classified 5: IoU 4/6
    masks[0, 1, 3:, :] = True       # classified 7 but not kept
    keep, classes = torch.tensor([[True, False]]), torch.tensor([[5, 7]])
    prompts = torch.tensor([[5, 7, 9, refer.NONE]])
    ious = pmp.prompt_ious(masks, keep, classes, prompts, instances, labels)
    assert abs(ious[0, 0].item() - 4 / 6) < 1e-6 and ious[0, 1].item() == 0.0
    assert ious[0, 2:].isnan().all()
