import pytest
import torch

from companion.methods.masked_image_modeling import lut
from companion import train
from companion.models import MAE, MAEConfig
from companion import masking, masks


def tiny_lut(seed=0):
    torch.manual_seed(seed)
    mae = MAE(MAEConfig(image_size=8, patch_size=2, dim=16, depth=1, heads=2, decoder_dim=16, decoder_depth=1,
                        decoder_heads=2))
    return lut.LUT(mae, hidden=32)


def test_mlp_head_maps_features_and_zero_layers_is_identity():
    head = lut.mlp_head(16, 32, 8, layers=2)
    assert head(torch.randn(5, 16)).shape == (5, 8)
    assert isinstance(lut.mlp_head(16, 32, 16, layers=0), torch.nn.Identity)
    with pytest.raises(ValueError, match="layers"):
        lut.mlp_head(16, 32, 8, layers=-1)


def test_disjoint_masks_keep_k_patches_each_and_never_share_one():
    v1, v2 = masks.disjoint_masks(6, 16, 0.75, torch.Generator().manual_seed(0))
    assert v1.dtype == torch.bool and v1.shape == v2.shape == (6, 16)
    assert (v1.sum(1) == 4).all() and (v2.sum(1) == 4).all() and not (v1 & v2).any()
    with pytest.raises(ValueError, match="ratio >= 0.5"):
        masks.disjoint_masks(2, 16, 0.25)


def test_crop_flip_without_padding_only_flips():
    x = torch.rand(8, 3, 6, 6)
    y = lut.crop_flip(x, 0, torch.Generator().manual_seed(0))
    same = (y == x).flatten(1).all(1)
    flipped = (y == x.flip(-1)).flatten(1).all(1)
    assert (same | flipped).all() and flipped.any() and same.any()


def test_crop_flip_shifts_content_by_at_most_the_padding():
    x = torch.zeros(16, 1, 8, 8)
    x[:, :, 4, 4] = 1.0
    y = lut.crop_flip(x, 2, torch.Generator().manual_seed(1))
    assert y.shape == x.shape
    rows, cols = (y[:, 0] == 1).nonzero()[:, 1:].T
    assert ((rows - 4).abs() <= 2).all()


def test_photometric_views_stay_images():
    x = torch.rand(10, 3, 8, 8)
    y = lut.photometric(x, torch.Generator().manual_seed(0))
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1 and not torch.equal(x, y)
    a, b = lut.two_views(x, 1, torch.Generator().manual_seed(0))
    assert a.shape == b.shape == x.shape


def test_bc_loss_is_two_minus_twice_the_cosine():
    q = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[3.0, 0.0], [-1.0, 0.0], [5.0, 0.0]])
    assert torch.allclose(lut.bc_loss(q, t), torch.tensor([0.0, 4.0, 2.0]))


def test_momentum_rises_from_base_to_one():
    assert lut.momentum_at(0, 100, 0.99) == pytest.approx(0.99)
    assert lut.momentum_at(99, 100, 0.99) == pytest.approx(1.0)
    assert 0.99 < lut.momentum_at(50, 100, 0.99) < 1.0


def run(bc_weight, steps=4, seed=0):
    model = tiny_lut()
    objective = lut.LUTObjective(0.75, bc_weight, 0.9, pad=1, generator=torch.Generator().manual_seed(seed))
    history = train.fit(model, torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(5)), None, steps,
                        batch_size=8, seed=seed, device="cpu", loss_fn=objective, progress=False)
    return model, objective, history


def test_baseline_and_lut_runs_are_paired_and_deterministic():
    _, mae_only, plain = run(0.0)
    model, with_bc, history = run(0.25)
    _, _, again = run(0.25)
    assert mae_only.teacher is None and set(plain.metrics) == {"mae"}  # BC not computed
    # the first step sees the same weights, views and masks: the same reconstruction loss
    assert plain.metrics["mae"][0] == pytest.approx(history.metrics["mae"][0], abs=1e-5)
    assert history == again and history.metrics == again.metrics
    assert all(0 <= v <= 4 for v in history.metrics["bc"])
    assert history[0] == pytest.approx(history.metrics["mae"][0] + 0.25 * history.metrics["bc"][0], rel=1e-5)
    assert history.metrics["momentum"] == pytest.approx([lut.momentum_at(s, 4, 0.9) for s in range(4)])


def test_teacher_is_a_frozen_moving_average_of_the_student():
    model, objective, _ = run(0.25, steps=3)
    teacher = objective.teacher
    assert teacher is not None and not any(p.requires_grad for p in teacher.parameters())
    initial = tiny_lut()
    w_t, w_s, w_0 = (m.mae.blocks[0].attn.qkv.weight for m in (teacher, model, initial))
    assert not torch.equal(w_t, w_s) and not torch.equal(w_t, w_0)


def test_blur_view_is_the_packages_gaussian_blur():
    x = torch.rand(64, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = lut.photometric(x, torch.Generator().manual_seed(1), jitter_p=0.0)
    blurred = (out - masking.gaussian_blur(x, lut.BLUR_SIGMA)).flatten(1).abs().amax(1) < 1e-6
    assert blurred.any() and not blurred.all()


def test_control_queries_pool_every_token_of_unmasked_views():
    model = tiny_lut()
    objective = lut.LUTObjective(0.75, 0.25, 0.9, pad=1, generator=torch.Generator().manual_seed(0), views="full")
    objective(model, torch.rand(8, 3, 8, 8))  # the first call creates the teacher
    seen = []
    encode = model.encode_pooled  # spy on the student only
    model.encode_pooled = lambda x, visible=None: seen.append(None if visible is None else visible.sum(1)) or encode(
        x, visible)
    objective(model, torch.rand(8, 3, 8, 8))
    assert seen == [None]  # one student pass over whole views; the masked view 1 goes to the MAE only
    with pytest.raises(ValueError, match="views"):
        lut.LUTObjective(views="shared")


def test_control_is_paired_with_mae_and_lut():
    _, _, plain = run(0.0)
    _, _, with_bc = run(0.25)
    model = tiny_lut()
    objective = lut.LUTObjective(0.75, 0.25, 0.9, pad=1, generator=torch.Generator().manual_seed(0), views="full")
    control = train.fit(model, torch.rand(32, 3, 8, 8, generator=torch.Generator().manual_seed(5)), None, 4,
                        batch_size=8, seed=0, device="cpu", loss_fn=objective, progress=False)
    # same weights, batch, views and masks at step 0: the reconstruction loss of view 1 is the same in all three
    assert control.metrics["mae"][0] == pytest.approx(plain.metrics["mae"][0], abs=1e-5)
    assert control.metrics["mae"][0] == pytest.approx(with_bc.metrics["mae"][0], abs=1e-5)
    assert all(0 <= v <= 4 for v in control.metrics["bc"])


def test_step_costs_rank_mae_below_lut_below_the_control():
    batch = torch.rand(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    cost = {name: lut.step_flops(tiny_lut(), lut.LUTObjective(0.75, w, 0.9, pad=1, views=views), batch)
            for name, w, views in [("mae", 0.0, "disjoint"), ("lut", 0.25, "disjoint"), ("control", 0.25, "full")]}
    assert 0 < cost["mae"] < cost["lut"] < cost["control"]
