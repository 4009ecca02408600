import pytest
import torch

from companion.data import scenes
from companion.diffusion import gaussian
from companion.methods.diffusion_editing import prompt_to_prompt as p2p


def test_swap_colour_changes_only_the_colour_word_of_the_slot():
    captions = scenes.encode(["red circle blue square", "yellow cross", "green triangle red circle"])
    edited, new = p2p.swap_colour(captions, 0, torch.Generator().manual_seed(0))
    assert torch.equal(edited[:, 1:], captions[:, 1:])
    assert (edited[:, 0] != captions[:, 0]).all()
    assert torch.equal(edited[:, 0], new + p2p.COLOUR_IDS[0])
    assert scenes.VOCAB[int(edited[0, 0])] in ("green", "blue", "yellow")
    with pytest.raises(ValueError):
        p2p.swap_colour(captions, 1, torch.Generator())  # the second caption has no second object


def test_injection_until_covers_the_first_tau_of_the_steps():
    grid = gaussian.levels(gaussian.Schedule(100), "ddim", 10)  # 90, 80, ..., 0
    for tau in (0.0, 0.2, 0.5, 1.0):
        until = p2p.injection_until(grid, tau)
        assert sum(level >= until for level in grid) == round(tau * len(grid))
    with pytest.raises(ValueError):
        p2p.injection_until(grid, 1.5)


def _toy():
    from companion.models.toy_sd import ToySD
    torch.manual_seed(0)
    return ToySD(channels=(8, 16), time_dim=16, text_dim=8, heads=2).eval()


def test_sample_edits_without_injection_is_same_seed_resampling_and_with_it_differs():
    model, sched = _toy(), gaussian.Schedule(40)
    src = scenes.encode(["red circle", "blue square"])
    tgt, _ = p2p.swap_colour(src, 0, torch.Generator().manual_seed(1))
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    a, edits = p2p.sample_edits(model, sched, src, tgt, x_T, [0.0, 0.5, 1.0], 4, 2.0)
    guided = gaussian.classifier_free(model, 2.0, model.null_cond)
    for caps, images in ((src, a), (tgt, edits[0.0])):
        alone = gaussian.sample(guided, x_T.shape, sched, cond={"captions": caps}, sampler="ddim", steps=4, start=x_T)
        assert torch.allclose(images, (alone + 1).div(2).clamp(0, 1), atol=1e-5)
    assert not torch.allclose(edits[1.0], edits[0.0], atol=1e-4)
    b, single = p2p.sample_edits(model, sched, src, tgt, x_T, [1.0], 4, 2.0)
    assert torch.allclose(single[1.0], edits[1.0], atol=1e-5)  # blocks do not interact


def test_injecting_the_same_prompt_reproduces_the_source():
    model, sched = _toy(), gaussian.Schedule(40)
    src = scenes.encode(["green triangle yellow cross", "red circle"])
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    a, b = p2p.sample_edits(model, sched, src, src, x_T, [1.0], 4, 2.0)
    assert torch.allclose(a, b[1.0], atol=1e-6)


def test_scene_maps_are_normalised_per_word():
    model, sched = _toy(), gaussian.Schedule(40)
    s = scenes.make_scenes(3, seed=0)
    maps = p2p.scene_maps(model, sched, s.images, s.captions, [5, 20, 35], torch.Generator().manual_seed(0))
    assert sorted(maps) == ["level0", "level1"]
    for m in maps.values():
        assert m.shape == (3, 4, 16, 16)
        assert torch.allclose(m.sum(dim=(2, 3)), torch.ones(3, 4), atol=1e-5)
