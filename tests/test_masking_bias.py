import torch

from companion.masking import bias


class Brightness(torch.nn.Module):
    """Class 1 iff the image's mean brightness is above 0.5: sensitive to any fill colour."""

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([0.5 - m, m - 0.5], 1) * 20

    def forward_masked(self, x, mask):  # an ideal masking: average over kept pixels only
        m = (x * mask).sum(dim=(1, 2, 3)) / (mask.sum(dim=(1, 2, 3)) * x.shape[1]).clamp_min(1)
        return torch.stack([0.5 - m, m - 0.5], 1) * 20


def test_flip_rate_and_kl_detect_a_biased_fill():
    x = torch.full((10, 1, 8, 8), 0.6)
    keep = torch.ones(10, 1, 8, 8, dtype=torch.bool)
    keep[..., :6] = False
    r = bias.missingness_bias(Brightness(), x, keep, ["black", "layer"])
    assert r["black"]["flip_rate"] == 1.0 and r["layer"]["flip_rate"] == 0.0
    assert r["black"]["kl"] > 1.0 and r["layer"]["kl"] < 1e-6
    assert r["black"]["flips"].shape == (10,)


def test_shape_leak_reports_per_image_correctness():
    x = torch.full((4, 1, 8, 8), 0.6)
    objects = torch.zeros(4, 1, 8, 8, dtype=torch.bool)
    objects[..., 2:6, 2:6] = True
    labels = torch.tensor([1, 1, 0, 0])
    r = bias.shape_leak(Brightness(), x, labels, objects, ["grey", "layer"])
    assert r["layer"]["correct"].tolist() == [1, 1, 0, 0]
    assert r["layer"]["accuracy"] == 0.5


def test_chance_level_is_the_majority_share():
    assert bias.chance_level(torch.tensor([0, 0, 0, 1]), 3) == 0.75
