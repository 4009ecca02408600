import torch

from companion.data import scenes
from companion.diffusion import control, gaussian
from companion.diffusion.control import AttentionControl
from companion.models.toy_sd import ToySD


def _toy():
    torch.manual_seed(0)
    return ToySD(channels=(8, 16), time_dim=16, text_dim=8, heads=2).eval()


def test_reinjected_own_maps_reproduce_the_sample():
    model, sched = _toy(), gaussian.Schedule(40)
    ctl = AttentionControl(model, model.cross_attention_layers())
    cond = {"captions": scenes.encode(["red circle blue square", "yellow cross"])}
    x_T = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    run = lambda: gaussian.sample(ctl, x_T.shape, sched, cond=cond, sampler="ddim", steps=5, start=x_T)
    with ctl.store():
        first = run()
    saved = {name: dict(by_level) for name, by_level in ctl.maps.items()}
    assert sum(len(v) for v in saved["level0"].values()) == 5
    with ctl.reweight(2, 0.0, [0, 1]):
        spoiled = run()
    assert not torch.allclose(spoiled, first, atol=1e-4)
    with ctl.reweight(2, 0.0, [0, 1]), ctl.inject(saved):  # the injected maps override the re-weighted ones
        again = run()
    assert torch.allclose(again, first, atol=1e-5)
    with ctl.reweight(2, 0.0, [0, 1]), ctl.inject(saved, rows=[1]):  # only row 1 is restored
        half = run()
    assert torch.allclose(half[1], first[1], atol=1e-5) and not torch.allclose(half[0], first[0], atol=1e-4)


def test_replace_with_tokens_takes_only_those_keys():
    model = _toy()
    ctl = AttentionControl(model, model.cross_attention_layers())
    captions = scenes.encode(["red circle", "red circle blue square"])
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)), torch.full((2,), 30)
    with torch.no_grad(), ctl.store():
        ctl(x, t, {"captions": captions})
    own = {name: by_level[30][0] for name, by_level in ctl.maps.items()}
    with torch.no_grad(), ctl.store(), ctl.replace([0], [1], until=0, tokens=[0, 1, 2]):
        ctl(x, t, {"captions": captions})
    first = ctl.maps["level1"][30][0]  # the middle block's layer runs first: its input is unchanged
    assert torch.equal(first[1, :, :, :3], own["level1"][0, :, :, :3])
    assert torch.equal(first[1, :, :, 3:], own["level1"][1, :, :, 3:])
    for name, by_level in ctl.maps.items():  # the source row is never edited
        assert torch.allclose(by_level[30][0][0], own[name][0], atol=1e-6)


def test_word_maps_average_resolutions_and_normalise():
    att16 = torch.zeros(1, 2, 256, 4)
    att16[0, :, 0, 0] = 1.0  # word 0 attends only from the top-left pixel
    att16[0, :, :, 1:] = 1 / 3
    att8 = torch.full((1, 2, 64, 4), 0.25)
    maps = control.word_maps([att16, att8], 16, offset=0)
    assert maps.shape == (1, 4, 16, 16)
    assert torch.allclose(maps.sum(dim=(2, 3)), torch.ones(1, 4))
    assert maps[0, 0, 0, 0] > 0.5 and maps[0, 0].argmax() == 0  # half from the 16x16 layer, half uniform
    assert torch.allclose(maps[0, 1], torch.full((16, 16), 1 / 256))


def test_mass_inside_the_word_masks():
    s = scenes.make_scenes(4, two_objects=1.0, seed=0)
    wm = s.objects.repeat_interleave(2, dim=1)  # words 2k, 2k+1 (colour, shape) name object k
    assert wm.shape == (4, 4, 16, 16) and torch.equal(wm[:, 2], s.objects[:, 1])
    uniform = torch.full((4, 4, 16, 16), 1 / 256)
    assert torch.allclose(control.mass_inside(uniform, wm), wm.float().mean(dim=(2, 3)))
    onmask = wm.float() / wm.float().sum(dim=(2, 3), keepdim=True)
    assert torch.allclose(control.mass_inside(onmask, wm), torch.ones(4, 4))
