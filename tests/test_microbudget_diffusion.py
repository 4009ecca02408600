import torch

from companion.diffusion.gaussian import Schedule
from companion.eval import count_flops
from companion.masks.tokens import token_ratio_mask, token_to_pixel_mask
from companion.methods.masked_image_modeling import microbudget_diffusion as mb
from companion.models.dit import DiT


def small(mixer_depth=1):
    torch.manual_seed(0)
    model = DiT(image_size=8, patch_size=2, dim=32, depth=2, heads=4, mlp_ratio=2.0, mixer_depth=mixer_depth)
    torch.nn.init.normal_(model.head.weight, std=0.1)
    return model


def batch(n=4):
    g = torch.Generator().manual_seed(3)
    return torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, torch.randint(0, 9, (n, 4), generator=g)


def test_patch_loss_weight_averages_over_kept_patches_only():
    visible = token_ratio_mask(5, 16, 0.75, torch.Generator().manual_seed(0))
    w = mb.patch_loss_weight(visible, 2)
    assert w.shape == (5, 1, 8, 8)
    err = torch.rand(5, 3, 8, 8)
    kept = token_to_pixel_mask(visible, 2).expand_as(err)
    assert torch.allclose((w * err).mean(), err[kept].mean())


def output_and_grad(model, x0, captions, sched, seed):
    """The model's output (N, C, H, W) inside the objective and the loss's gradient with respect to it."""
    captured = []

    def hook(module, args, out):
        out.retain_grad()
        captured.append(out)

    handle = model.register_forward_hook(hook)
    mb.MaskedDiffusion(sched, 0.75, seed=seed)(model, x0, captions).backward()
    handle.remove()
    return captured[0], captured[0].grad


def test_the_loss_ignores_dropped_patches():
    """Only kept patches carry a prediction and a gradient; for naive masking, changing the input inside dropped
    patches leaves the loss unchanged (the kept tokens never see them), for deferred masking only the mixer does."""
    sched = Schedule(50)
    x0, captions = batch()
    # the mask the objective draws: the first draw of its generator
    visible = token_ratio_mask(4, 16, 0.75, torch.Generator().manual_seed(7))
    kept = token_to_pixel_mask(visible, 2).expand_as(x0)
    changed = torch.where(kept, x0, torch.rand_like(x0) * 2 - 1)
    for mixer_depth in (0, 1):
        model = small(mixer_depth)
        base = mb.MaskedDiffusion(sched, 0.75, seed=7)(model, x0, captions)
        other = mb.MaskedDiffusion(sched, 0.75, seed=7)(model, changed, captions)
        assert torch.allclose(base, other) == (mixer_depth == 0)
        out, grad = output_and_grad(model, x0, captions, sched, seed=7)
        assert torch.all(out[~kept] == 0) and torch.all(grad[~kept] == 0) and torch.all(grad[kept] != 0)


def test_unmasked_objective_is_plain_diffusion_loss_and_seeded():
    sched = Schedule(50)
    x0, captions = batch()
    model = small()
    a = mb.MaskedDiffusion(sched, 0.0, seed=1)(model, x0, captions)
    b = mb.MaskedDiffusion(sched, 0.0, seed=1)(model, x0, captions)
    assert torch.equal(a, b)


def test_masking_cuts_counted_flops_and_equal_flop_steps():
    sched = Schedule(50)
    x0, captions = batch(8)

    def step_flops(depth, ratio):
        model, objective = small(depth), mb.MaskedDiffusion(sched, ratio, seed=0)
        return count_flops(lambda: objective(model, x0, captions).backward())

    flops = {"unmasked": step_flops(0, 0.0), "naive": step_flops(0, 0.75), "deferred": step_flops(1, 0.75)}
    assert flops["naive"] < flops["deferred"] < flops["unmasked"]
    assert mb.equal_flop_steps(100, flops["deferred"], flops["naive"]) > 100
    assert mb.equal_flop_steps(10, 3.0, 2.0) == 15
