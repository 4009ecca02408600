"""Referring scenes (issue 13's data), IoU-controlled mask jitter, visual prompts and mask pooling."""

import pytest
import torch

from companion.data import refer, scenes, words
from companion.masking.prompts import PROMPTS, bounding_boxes, crop_zero_shot, visual_prompt
from companion.masks.jitter import iou, iou_jitter
from companion.models.clip import ToyCLIP
from companion.models.seg import mask_pool


@pytest.fixture(scope="module")
def sc():
    return refer.make_refer_scenes(200, seed=0, dof=0.3)


def test_scenes_are_deterministic_and_instances_do_not_overlap(sc):
    again = refer.make_refer_scenes(200, seed=0, dof=0.3)
    assert torch.equal(sc.images, again.images) and torch.equal(sc.captions, again.captions)
    assert sc.images.shape == (200, 3, 32, 32) and sc.images.min() >= 0 and sc.images.max() <= 1
    assert not (sc.instances.sum(dim=1) > 1).any()
    present = sc.labels != refer.NONE
    assert torch.equal(sc.instances.flatten(2).any(-1), present)
    counts = sc.named.sum(1)
    assert counts.min() >= 2 and counts.max() <= 6


def test_captions_name_the_objects_or_only_the_sharp_subject(sc):
    for i in range(40):
        names = sorted(sc.caption(i).split(" ")[k] + " " + sc.caption(i).split(" ")[k + 1]
                       for k in range(0, len(sc.caption(i).split()), 2))
        if sc.subject[i] >= 0:
            assert names == [refer.CLASSES[sc.labels[i, sc.subject[i]]]]
        else:
            assert names == sorted(refer.CLASSES[c] for c in sc.labels[i][sc.labels[i] >= 0].tolist())


def test_depth_of_field_keeps_the_subject_sharp_and_blurs_the_rest(sc):
    plain = refer.make_refer_scenes(200, seed=0, dof=0.0)
    i = int((sc.subject >= 0).nonzero()[0])
    subject = sc.instances[i, sc.subject[i]]
    assert torch.equal(sc.images[i][:, subject], plain.images[i][:, subject])
    assert not torch.allclose(sc.images[i][:, ~subject], plain.images[i][:, ~subject])


def test_seen_classes_leave_the_unseen_out_and_the_shifted_domain_differs():
    s = refer.make_refer_scenes(100, seed=1, classes=refer.SEEN, domain="shifted")
    assert not set(s.labels[s.labels >= 0].tolist()) & set(refer.UNSEEN)
    assert len(refer.UNSEEN) == len(refer.COLOURS) and len(set(map(refer.colour_of, refer.UNSEEN))) == 6
    plain = refer.make_refer_scenes(100, seed=1, classes=refer.SEEN)
    bg = ~s.instances.any(1)
    assert s.images.permute(1, 0, 2, 3)[:, bg].mean() < plain.images.permute(1, 0, 2, 3)[:, ~plain.instances.any(1)].mean()


def test_referring_targets_follow_the_phrase(sc):
    e = refer.referring(sc, seed=0)
    assert set(e.kind.tolist()) == set(range(len(refer.KINDS)))
    for i in range(len(e)):
        phrase, lab = e.phrase(i).split(), sc.labels[i]
        kind = refer.KINDS[e.kind[i]]
        if kind == "absent":
            assert not e.targets[i].any() and refer.CLASSES.index(" ".join(phrase)) not in lab.tolist()
        elif kind == "attribute":
            assert torch.equal(e.target_slots[i], lab == refer.CLASSES.index(" ".join(phrase)))
        elif kind == "spatial":
            assert e.target_slots[i].any()
            ref = refer.CLASSES.index(" ".join(phrase[3:]))
            x_ref = sc.centres[i, lab.tolist().index(ref), 0]
            xs = sc.centres[i, e.target_slots[i], 0]
            assert (xs < x_ref).all() if phrase[1] == "left" else (xs > x_ref).all()
        assert torch.equal(e.targets[i], (sc.instances[i] & e.target_slots[i][:, None, None]).any(0))


def test_one_tokenizer_for_both_caption_vocabularies():
    assert torch.equal(scenes.encode(["red circle"]), words.encode(["red circle"], scenes.VOCAB, 4))
    assert words.decode(words.encode(["all blue"], refer.VOCAB, 5)[0], refer.VOCAB) == "all blue"
    with pytest.raises(ValueError, match="unknown word"):
        words.encode(["purple circle"], refer.VOCAB, 5)


@pytest.mark.parametrize("target", [0.9, 0.7, 0.5])
def test_iou_jitter_reaches_its_target_within_tolerance(sc, target):
    masks = sc.instances[sc.named][:150]
    jittered, reached = iou_jitter(masks, target, torch.Generator().manual_seed(0))
    assert torch.allclose(reached, iou(jittered, masks))
    err = (reached - target).abs()
    assert abs(float(reached.mean()) - target) < 0.03 and float(err.median()) < 0.03
    assert jittered.flatten(1).any(1).all()
    same, one = iou_jitter(masks, 1.0)
    assert torch.equal(same, masks) and (one == 1).all()


def test_reverse_mask_prompts_leave_the_object_untouched_and_change_the_rest(sc):
    masks = sc.instances[:, 0]
    inside = masks[:, None].expand(-1, 3, -1, -1)
    for kind in ("black", "grey", "blur", "blur_circle", "box", "circle"):
        out = visual_prompt(sc.images, masks, kind)
        assert torch.equal(out[inside], sc.images[inside]), kind
        assert not torch.allclose(out[~inside], sc.images[~inside]), kind
    assert set(PROMPTS) >= {"crop", "box", "circle", "black", "grey", "blur"}
    b = bounding_boxes(masks)
    ys, xs = masks[0].nonzero(as_tuple=True)
    assert b[0].tolist() == [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]


def test_mask_pooling_equals_the_masked_mean():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(3, 5, 8, 8, generator=g)
    masks = torch.rand(3, 2, 8, 8, generator=g) > 0.6
    pooled = mask_pool(feats, masks)
    for n in range(3):
        for k in range(2):
            m = masks[n, k]
            assert torch.allclose(pooled[n, k], feats[n][:, m].mean(dim=1), atol=1e-5)
    # masks at image resolution: a mask covering whole 4×4 cells equals the mean over those cells
    big = masks.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)
    assert torch.allclose(mask_pool(feats, big), pooled, atol=1e-5)


def test_crop_zero_shot_scores_every_named_object():
    torch.manual_seed(0)
    clip = ToyCLIP(len(refer.VOCAB), refer.CAPTION_LEN, dim=16, depth=1, text_layers=1, heads=2).eval()
    scenes = refer.make_refer_scenes(3, seed=0)
    correct, labels = crop_zero_shot(clip, scenes)
    assert correct.dtype == torch.bool and len(correct) == int((scenes.labels >= 0).sum())
    assert torch.equal(labels.sort().values, scenes.labels[scenes.labels >= 0].sort().values)
