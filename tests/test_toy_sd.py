"""The diffusion family's shared pieces: captioned scenes, the UNet's self- and cross-frame attention, ToySD, the
attention controller."""

import torch

from companion.data import scenes
from companion.diffusion import gaussian
from companion.diffusion.control import AttentionControl
from companion.models.toy_sd import ToySD, from_model, inpaint_cond, to_model
from companion.models.unet import UNet


def test_scenes_captions_masks_and_read_outs():
    s = scenes.make_scenes(64, seed=3)
    again = scenes.make_scenes(64, seed=3)
    assert torch.equal(s.images, again.images) and torch.equal(s.captions, again.captions)
    assert s.images.shape == (64, 3, 16, 16) and s.captions.shape == (64, 4) and s.objects.shape == (64, 2, 16, 16)
    two = s.colours[:, 1] >= 0
    assert torch.equal(two, s.captions[:, 2] != scenes.PAD) and 0 < two.sum() < 64
    assert torch.all(s.objects[~two, 1].sum((1, 2)) == 0) and torch.all(s.objects[:, 0].sum((1, 2)) > 0)
    assert (s.centres[two, 0, 0] <= s.centres[two, 1, 0]).all()  # the first named object is the left one
    assert (scenes.segment(s.images, s.background) == s.objects.any(1)).float().mean() > 0.99
    assert torch.equal(scenes.colour_index(s.images, s.objects[:, 0]), s.colours[:, 0])
    assert torch.all(scenes.colour_index(s.images[~two], s.objects[~two, 1]) == -1)
    texts = [s.caption(i) for i in range(64)]
    assert torch.equal(scenes.encode(texts), s.captions)
    redrawn, objects = scenes.render(s.colours, s.shapes, s.centres, s.radii, s.background, seed=4)
    assert torch.equal(objects, s.objects) and torch.equal(redrawn, s.images)  # make_scenes draws with seed + 1


def test_cross_frame_attention_over_one_frame_is_plain_self_attention():
    torch.manual_seed(0)
    net = UNet(3, 3, (8, 16), time_dim=8, context_dim=8, attn_levels=(0, 1), self_attn_levels=(1,), heads=2).eval()
    x, t, ctx = torch.randn(4, 3, 8, 8), torch.zeros(4, dtype=torch.long), torch.randn(4, 2, 8)
    plain = net(x, t, ctx)
    with net.cross_frame(1):  # keys = the frame itself, twice: the same softmax average
        assert torch.allclose(net(x, t, ctx), plain, atol=1e-5)
    with net.cross_frame(2):
        out = net(x, t, ctx)
    assert torch.allclose(out[0::2], net(x[0::2], t[0::2], ctx[0::2]), atol=1e-5)  # frame 0 reads itself only
    assert not torch.allclose(out[1::2], net(x[1::2], t[1::2], ctx[1::2]), atol=1e-3)
    assert set(net.cross_attention_layers()) == {"level0", "level1"}


def test_toy_sd_text_to_image_is_inpainting_everything():
    torch.manual_seed(0)
    model = ToySD().eval()
    s = scenes.make_scenes(3, seed=1)
    x, t = to_model(s.images), torch.tensor([0, 10, 50])
    keep = inpaint_cond(s.captions, x, torch.zeros(3, 1, 16, 16))
    assert torch.equal(keep["masked"], x)  # nothing to fill: the masked image is the image
    everything = inpaint_cond(s.captions, x, torch.ones(3, 1, 16, 16))
    assert torch.all(everything["masked"] == 0)
    assert torch.allclose(model(x, t, {"captions": s.captions}), model(x, t, everything))
    assert torch.allclose(from_model(to_model(s.images)), s.images)
    null = model.null_cond({"captions": s.captions})
    assert torch.all(null["captions"] == scenes.PAD)


def test_attention_control_stores_per_level_and_replacing_own_maps_changes_nothing():
    torch.manual_seed(0)
    model = ToySD().eval()
    s = scenes.make_scenes(2, seed=2)
    cond = {"captions": torch.cat([s.captions[:1], s.captions[:1]])}
    ctl = AttentionControl(model, model.cross_attention_layers())
    sched = gaussian.Schedule(20)
    start = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(0)).expand(2, -1, -1, -1)
    with ctl.store():
        plain = gaussian.sample(ctl, (2, 3, 16, 16), sched, cond=cond, sampler="ddim", steps=4, start=start)
    assert sorted(ctl.maps["level0"]) == sorted(gaussian.levels(sched, "ddim", 4))
    assert ctl.mean_maps("level1").shape == (2, 64, 5)  # the start token and 4 words
    with ctl.replace([0], [1], until=0):  # row 1 = row 0 (same prompt, same start): its own maps
        replaced = gaussian.sample(ctl, (2, 3, 16, 16), sched, cond=cond, sampler="ddim", steps=4, start=start)
    assert torch.allclose(replaced, plain, atol=1e-5)
    other = torch.cat([start[:1], -start[:1]])  # row 1 from another start: now the maps differ
    alone = gaussian.sample(ctl, (2, 3, 16, 16), sched, cond=cond, sampler="ddim", steps=4, start=other)
    with ctl.replace([0], [1], until=sched.num_steps):  # no level reaches `until`: nothing replaced
        assert torch.equal(gaussian.sample(ctl, (2, 3, 16, 16), sched, cond=cond, sampler="ddim", steps=4,
                                           start=other), alone)
    with ctl.replace([0], [1], until=0):
        swapped = gaussian.sample(ctl, (2, 3, 16, 16), sched, cond=cond, sampler="ddim", steps=4, start=other)
    assert torch.equal(swapped[0], alone[0]) and not torch.allclose(swapped[1], alone[1], atol=1e-4)
    with ctl.reweight(2, 0.0, [1]):
        muted = gaussian.sample(ctl, (2, 3, 16, 16), sched, cond=cond, sampler="ddim", steps=4, start=start)
    assert torch.allclose(muted[0], plain[0], atol=1e-5) and not torch.allclose(muted[1], plain[1], atol=1e-4)
