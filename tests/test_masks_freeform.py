import pytest
import torch

from companion import masks


@pytest.mark.parametrize("area", [0.0, 0.1, 0.23, 0.5, 1.0])
def test_free_form_paints_exactly_the_requested_area(area):
    m = masks.free_form(8, 32, area, torch.Generator().manual_seed(0))
    assert m.dtype == torch.bool and m.shape == (8, 1, 32, 32)
    assert (m.sum(dim=(1, 2, 3)) == round(area * 32 * 32)).all()


def test_free_form_per_mask_areas():
    areas = torch.tensor([0.1, 0.3, 0.7])
    m = masks.free_form(3, 16, areas, torch.Generator().manual_seed(1))
    assert m.sum(dim=(1, 2, 3)).tolist() == [round(a * 256) for a in areas.tolist()]


def test_free_form_is_deterministic_per_seed_and_varies_across_seeds():
    a = masks.free_form(4, 32, 0.2, torch.Generator().manual_seed(3))
    b = masks.free_form(4, 32, 0.2, torch.Generator().manual_seed(3))
    c = masks.free_form(4, 32, 0.2, torch.Generator().manual_seed(4))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a[0], a[1])  # masks of one call differ


def test_free_form_strokes_are_not_scattered_pixels():
    """Brush strokes: most painted pixels have a painted 4-neighbour (a random pixel set at 20 % would not)."""
    m = masks.free_form(16, 32, 0.2, torch.Generator().manual_seed(0))[:, 0]
    nb = torch.zeros_like(m)
    nb[:, 1:] |= m[:, :-1]
    nb[:, :-1] |= m[:, 1:]
    nb[:, :, 1:] |= m[:, :, :-1]
    nb[:, :, :-1] |= m[:, :, 1:]
    assert (m & nb).sum() / m.sum() > 0.9


def test_free_form_rejects_bad_area():
    with pytest.raises(ValueError):
        masks.free_form(1, 8, 1.5)
