"""The Gaussian diffusion toolkit: schedules, the x0/eps algebra, the loss, and what the sampler's hooks guarantee."""

import math

import pytest
import torch

from companion.diffusion import gaussian


class Toy(torch.nn.Module):
    """A fixed, input-dependent 'denoiser' (no training needed): predictions that are neither zero nor the truth."""

    def forward(self, x, t, cond=None):
        return 0.5 * torch.tanh(x) + 0.01 * t.float().view(-1, *([1] * (x.dim() - 1)))


def test_cosine_schedule_ends():
    s = gaussian.Schedule(200, "cosine")
    assert s.betas.shape == s.alphas.shape == s.alpha_bars.shape == (200,)
    assert s.alpha_bars.dtype == torch.float32
    f = lambda u: math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    assert s.alpha_bars[0].item() == pytest.approx(f(1 / 200) / f(0), rel=1e-5)
    assert 0.999 < s.alpha_bars[0].item() < 1
    assert s.alpha_bars[-1].item() < 1e-4
    assert torch.all(s.alpha_bars[1:] < s.alpha_bars[:-1]) and s.betas.max() <= 0.999
    lin = gaussian.Schedule(1000, "linear")
    assert lin.betas[0].item() == pytest.approx(1e-4) and lin.betas[-1].item() == pytest.approx(0.02)
    with pytest.raises(ValueError):
        gaussian.Schedule(10, "quadratic")


def test_q_sample_predict_round_trip():
    g = torch.Generator().manual_seed(0)
    s = gaussian.Schedule(50)
    x0, noise = torch.randn(6, 3, 4, 5, generator=g), torch.randn(6, 3, 4, 5, generator=g)
    t = torch.tensor([0, 1, 10, 25, 40, 49])
    xt = s.q_sample(x0, t, noise)
    torch.testing.assert_close(s.predict_x0(xt, t, noise), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(s.predict_eps(xt, t, x0), noise, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(s.q_sample(x0, torch.full((6,), -1), noise), x0)


def test_loss_weight_and_prediction():
    s = gaussian.Schedule(20)
    x0 = torch.randn(4, 2, 6)
    a = gaussian.diffusion_loss(Toy(), x0, s, prediction="x0", generator=torch.Generator().manual_seed(1))
    w = torch.ones(1, 1, 6)
    b = gaussian.diffusion_loss(Toy(), x0, s, prediction="x0", weight=w, generator=torch.Generator().manual_seed(1))
    c = gaussian.diffusion_loss(Toy(), x0, s, prediction="x0", weight=2 * w,
                                generator=torch.Generator().manual_seed(1))
    assert a.dim() == 0 and a.item() == pytest.approx(b.item()) and c.item() == pytest.approx(2 * a.item())
    e = gaussian.diffusion_loss(Toy(), x0, s, prediction="eps", generator=torch.Generator().manual_seed(1))
    assert e.item() != pytest.approx(a.item())


def test_a_perfect_x0_model_is_recovered_by_both_samplers():
    s = gaussian.Schedule(30)
    target = torch.randn(2, 3, 4, generator=torch.Generator().manual_seed(3))
    oracle = lambda x, t, cond: target  # noqa: E731
    for sampler, steps in [("ddpm", None), ("ddim", 5), ("ddpm", 6)]:
        out = gaussian.sample(oracle, target.shape, s, prediction="x0", sampler=sampler, steps=steps,
                              generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, target, atol=1e-4, rtol=1e-4)


def test_ddim_eta0_is_deterministic_and_ddpm_is_not():
    s = gaussian.Schedule(40)
    run = lambda seed, **kw: gaussian.sample(Toy(), (3, 2, 8), s, generator=torch.Generator().manual_seed(seed),  # noqa: E731
                                             **kw)
    # the start noise is the only randomness: equal seeds give equal samples, and with eta=0 the start fixes all
    torch.testing.assert_close(run(0, sampler="ddim", steps=8), run(0, sampler="ddim", steps=8))
    x_T = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0))
    calls = []
    gaussian.sample(Toy(), (3, 2, 8), s, sampler="ddim", steps=8, generator=torch.Generator().manual_seed(0),
                    callback=lambda level, x, x0: calls.append((level, x.clone())))
    assert [c[0] for c in calls] == [35, 30, 25, 20, 15, 10, 5, 0]
    torch.testing.assert_close(calls[0][1], x_T)
    assert not torch.allclose(run(0, sampler="ddpm", steps=8), run(0, sampler="ddim", steps=8))


def test_project_leaves_conditioned_entries_exact():
    s = gaussian.Schedule(25)
    value = torch.randn(4, 3, 1)

    def project(x, cond):
        x = x.clone()
        x[:, :, :1] = cond
        return x

    seen = []
    out = gaussian.sample(Toy(), (4, 3, 6), s, cond=value, project=project, sampler="ddim", steps=5,
                          generator=torch.Generator().manual_seed(0), callback=lambda level, x, x0: seen.append(x))
    assert torch.equal(out[:, :, :1], value)
    assert all(torch.equal(x[:, :, :1], value) for x in seen)


@pytest.mark.parametrize("sampler,steps", [("ddpm", None), ("ddim", 7)])
def test_replacement_keeps_known_entries_exact(sampler, steps):
    s = gaussian.Schedule(21)
    known = torch.randn(2, 2, 8)
    mask = torch.zeros(2, 2, 8, dtype=torch.bool)
    mask[:, :, :3] = True
    out = gaussian.sample(Toy(), known.shape, s, known=known, known_mask=mask, sampler=sampler, steps=steps,
                          eta=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[mask], known[mask])
    assert not torch.allclose(out[~mask], known[~mask])


def test_repaint_with_one_resample_equals_replacement():
    s = gaussian.Schedule(30)
    known = torch.randn(2, 1, 8)
    mask = torch.rand(2, 1, 8, generator=torch.Generator().manual_seed(1)) > 0.5
    kw = dict(known=known, known_mask=mask, mask_noise=0.1)
    plain = gaussian.sample(Toy(), known.shape, s, generator=torch.Generator().manual_seed(0), **kw)
    repaint1 = gaussian.sample(Toy(), known.shape, s, resample=1, jump_length=5,
                               generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(plain, repaint1)
    repaint3 = gaussian.sample(Toy(), known.shape, s, resample=3, jump_length=5,
                               generator=torch.Generator().manual_seed(0), **kw)
    assert torch.equal(repaint3[mask], known[mask]) and not torch.equal(repaint3, plain)


def test_jump_schedule_walk():
    assert gaussian.jump_schedule(4) == [0, 1, 2, 3, 4]
    walk = gaussian.jump_schedule(6, resample=3, jump_length=2)
    assert walk[0] == 0 and walk[-1] == 6
    assert all(abs(b - a) == 1 for a, b in zip(walk, walk[1:]))
    downs = sum(b > a for a, b in zip(walk, walk[1:]))
    ups = sum(b < a for a, b in zip(walk, walk[1:]))
    assert downs - ups == 6 and ups == 2 * 2 * 2        # jump points 1 and 3 above clean, 2 extra passes, 2 steps up


def test_mask_noise_only_in_the_unknown_region_and_levels():
    s = gaussian.Schedule(10)
    known = torch.zeros(1, 1, 6)
    mask = torch.tensor([[[True, True, True, False, False, False]]])
    a = gaussian.sample(Toy(), known.shape, s, known=known, known_mask=mask, generator=torch.Generator().manual_seed(0))
    b = gaussian.sample(Toy(), known.shape, s, known=known, known_mask=mask, mask_noise=0.5,
                        generator=torch.Generator().manual_seed(0))
    assert torch.equal(a[mask], b[mask]) and not torch.allclose(a[~mask], b[~mask])
    assert gaussian.levels(gaussian.Schedule(200), "ddim", 10) == list(range(180, -1, -20))


class GaussianOracle(torch.nn.Module):
    """The exact ε-predictor for data x0 ~ N(0, s² I): E[ε | x_t] = √(1−ᾱ) x_t / (ᾱ s² + 1 − ᾱ), so the DDIM ODE is
    the true probability-flow ODE and inversion is exact up to the discretisation."""

    def __init__(self, sched, s=0.5):
        super().__init__()
        self.sched, self.s = sched, s

    def forward(self, x, t, cond=None):
        ab = self.sched._ab(t, x)
        return (1 - ab).sqrt() * x / (ab * self.s ** 2 + 1 - ab)


def test_ddim_inversion_round_trip_within_tolerance():
    """Invert then sample back on the same grid: mean |error| < 0.03 at 50 steps (data std 0.5), and it halves
    when the steps double (a first-order discretisation error, nothing else)."""
    sched = gaussian.Schedule(200)
    model = GaussianOracle(sched)
    x0 = 0.5 * torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    errors = {}
    for steps in (50, 100):
        traj = gaussian.ddim_invert(model, x0, sched, steps)
        assert len(traj) == steps + 1 and torch.equal(traj[0], x0)
        back = gaussian.sample(model, x0.shape, sched, sampler="ddim", steps=steps, start=traj[-1])
        errors[steps] = (back - x0).abs().mean().item()
    assert errors[50] < 0.03 and errors[100] < 0.6 * errors[50]


def test_start_replaces_the_initial_noise_and_known_may_be_a_function_of_the_level():
    sched, model = gaussian.Schedule(50), Toy()
    start = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    a = gaussian.sample(model, start.shape, sched, sampler="ddim", steps=5, start=start)
    b = gaussian.sample(model, start.shape, sched, sampler="ddim", steps=5, start=start.clone())
    assert torch.equal(a, b)
    known_mask = torch.zeros(2, 1, 4, 4, dtype=torch.bool)
    known_mask[..., :2] = True
    seen = []

    def known(level):
        seen.append(level)
        return torch.full((2, 1, 4, 4), float(level))

    out = gaussian.sample(model, start.shape, sched, sampler="ddim", steps=5, start=start, known=known,
                          known_mask=known_mask)
    assert seen == gaussian.levels(sched, "ddim", 5) + [-1]
    assert torch.all(out[known_mask.expand_as(out)] == -1)


def test_classifier_free_guidance_combines_one_batched_pass():
    calls = []

    def model(x, t, cond):
        calls.append(len(x))
        return x * cond["w"].view(-1, 1)

    x, t = torch.ones(3, 2), torch.zeros(3, dtype=torch.long)
    cond = {"w": torch.tensor([2.0, 3.0, 4.0])}
    null = lambda c: {"w": torch.ones_like(c["w"])}  # noqa: E731
    assert torch.equal(gaussian.classifier_free(model, 1.0, null)(x, t, cond), model(x, t, cond))
    out = gaussian.classifier_free(model, 3.0, null)(x, t, cond)
    assert torch.allclose(out[:, 0], 1 + 3 * (cond["w"] - 1)) and calls[0] == 6
