import pytest
import torch

from companion.data.camera import CameraNoise
from companion.masks.pixel import num_dropped, pixel_sparse
from companion.methods.masked_image_modeling import mid_denoise as mid

# ---- the camera noise model (companion.data.camera)


def flat_noise(cam: CameraNoise, level: float, n: int = 64, size: int = 32, seed: int = 0) -> torch.Tensor:
    return cam.noise(torch.full((n, 3, size, size), level), torch.Generator().manual_seed(seed))


def test_camera_noise_variance_grows_with_the_signal_as_configured():
    cam = CameraNoise(gain=0.02, read=0.03, spatial=0.5, channel=0.5)
    for level in (0.1, 0.5, 0.9):
        n = flat_noise(cam, level)[..., 1:-1, 1:-1]  # away from the replicate padding
        assert abs(n.mean()) < 0.003
        assert n.var().item() == pytest.approx(cam.variance(torch.tensor(level)).item(), rel=0.05)
    assert flat_noise(cam, 0.9).var() > 2 * flat_noise(cam, 0.1).var()


def test_white_camera_noise_is_poisson_gaussian_and_uncorrelated():
    cam = CameraNoise(gain=0.02, read=0.03, spatial=0.0, channel=0.0)
    assert torch.allclose(cam.kernel(), torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]))
    assert torch.allclose(cam.mixing(), torch.eye(3))
    n = flat_noise(cam, 0.5)
    assert n.var().item() == pytest.approx(0.02 * 0.5 + 0.03 ** 2, rel=0.03)
    pairs = torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()])
    assert abs(torch.corrcoef(pairs)[0, 1]) < 0.02
    assert abs(torch.corrcoef(n.transpose(0, 1).reshape(3, -1))[0, 1]) < 0.02


@pytest.mark.parametrize("spatial,channel", [(0.5, 0.5), (1.0, 0.2), (0.25, 0.9)])
def test_camera_noise_correlations_match_the_configuration(spatial, channel):
    cam = CameraNoise(gain=0.01, read=0.02, spatial=spatial, channel=channel)
    n = flat_noise(cam, 0.5)[..., 1:-1, 1:-1]
    horizontal = torch.corrcoef(torch.stack([n[..., :-1].flatten(), n[..., 1:].flatten()]))[0, 1]
    vertical = torch.corrcoef(torch.stack([n[..., :-1, :].flatten(), n[..., 1:, :].flatten()]))[0, 1]
    assert horizontal.item() == pytest.approx(cam.neighbour_correlation(), abs=0.02)
    assert vertical.item() == pytest.approx(cam.neighbour_correlation(), abs=0.02)
    measured = torch.corrcoef(n.transpose(0, 1).reshape(3, -1))
    assert torch.allclose(measured, cam.channel_correlation(), atol=0.03)  # seeded; strong spatial correlation leaves fewer independent samples


def test_camera_noise_is_seeded_and_rejects_bad_settings():
    cam = CameraNoise()
    x = torch.rand(4, 3, 8, 8)
    a, b = cam(x, torch.Generator().manual_seed(3)), cam(x, torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and not torch.equal(a, cam(x, torch.Generator().manual_seed(4)))
    assert a.shape == x.shape
    with pytest.raises(ValueError):
        CameraNoise(spatial=1.5)


# ---- pixel-sparse masks (companion.masks.pixel)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 0.6, 0.8, 1.0])
def test_pixel_sparse_drops_exactly_its_share(ratio):
    m = pixel_sparse(10, (16, 12), ratio, torch.Generator().manual_seed(0))
    assert m.shape == (10, 1, 16, 12) and m.dtype == torch.bool
    dropped = (~m).flatten(1).sum(1)
    assert torch.equal(dropped, torch.full((10,), num_dropped((16, 12), ratio)))
    assert num_dropped(16, 0.6) == round(0.6 * 256)


def test_pixel_sparse_is_seeded_and_differs_across_images():
    a = pixel_sparse(8, 16, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(a, pixel_sparse(8, 16, 0.5, torch.Generator().manual_seed(1)))
    assert not torch.equal(a[0], a[1])
    with pytest.raises(ValueError):
        pixel_sparse(1, 4, 1.2)


# ---- MID (methods.masked_image_modeling.mid_denoise)


def test_objective_draws_the_same_noise_whatever_the_mask_ratio_and_masks_the_input():
    seen = {}

    class Spy(torch.nn.Module):
        def forward(self, y):
            seen.setdefault(self.name, []).append(y.clone())
            return y

    x = torch.rand(4, 3, 8, 8)
    for name, ratio in (("plain", 0.0), ("masked", 0.5)):
        spy = Spy()
        spy.name = name
        mid.DenoiseObjective(mid.GaussianSampler(0.1), ratio, seed=5)(spy, x)
    plain, masked = seen["plain"][0], seen["masked"][0]
    dropped = (masked == 0).all(1)
    assert torch.equal(dropped.flatten(1).sum(1), torch.full((4,), 32))
    assert torch.allclose(masked, plain * ~dropped[:, None])


def test_objective_is_a_differentiable_seeded_loss():
    torch.manual_seed(0)
    model = mid.Denoiser((8, 16))
    x = torch.rand(4, 3, 8, 8)
    loss = mid.DenoiseObjective(mid.GaussianSampler(0.1), 0.6, seed=2)(model, x)
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    again = mid.DenoiseObjective(mid.GaussianSampler(0.1), 0.6, seed=2)(model, x)
    assert torch.allclose(loss, again)


def test_denoise_averages_masked_predictions_and_plain_is_one_pass():
    identity = torch.nn.Identity()
    y = torch.rand(3, 3, 8, 8)
    assert torch.equal(mid.denoise(identity, y), y)
    ratio, k = 0.5, 200
    avg = mid.denoise(identity, y, ratio, k, torch.Generator().manual_seed(0))
    assert torch.allclose(avg, y * (1 - ratio), atol=0.15)  # each pixel kept in about half the masks
    again = mid.denoise(identity, y, ratio, k, torch.Generator().manual_seed(0))
    assert torch.equal(avg, again)
    assert torch.equal(mid.residuals(identity, y), torch.zeros_like(y))


def test_residual_sampler_draws_windows_of_the_bank_with_flips():
    bank = torch.arange(2 * 3 * 6 * 6, dtype=torch.float32).view(2, 3, 6, 6)
    sampler = mid.ResidualSampler(bank)
    x = torch.zeros(50, 3, 4, 4)
    n = sampler(x, torch.Generator().manual_seed(0))
    assert n.shape == x.shape
    windows = [bank[i, :, t:t + 4, j:j + 4] for i in range(2) for t in range(3) for j in range(3)]
    windows = [w.flip(dims) for w in windows for dims in ((), (-1,), (-2,), (-2, -1))]
    for sample in n:
        assert any(torch.equal(sample, w) for w in windows)
    assert torch.equal(n, sampler(x, torch.Generator().manual_seed(0)))
    with pytest.raises(ValueError):
        sampler(torch.zeros(1, 3, 8, 8))


def test_noise_spectrum_is_flat_for_white_and_low_pass_for_camera_noise():
    white = torch.randn(64, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    f, power = mid.noise_spectrum(white)
    assert f.shape == power.shape == (17,)
    assert power[1:].max() / power[1:].min() < 1.5
    _, camera = mid.noise_spectrum(CameraNoise(0.0, 0.1, 0.5, 0.0).correlate(white))
    assert camera[1] > 3 * camera[-1]
