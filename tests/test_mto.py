import pytest
import torch

from companion import masks, train
from companion.methods.masked_image_modeling import mto
from companion.models import MAE, MAEConfig

torch.set_num_threads(1)
CFG = dict(image_size=8, patch_size=2, dim=16, depth=2, heads=2, decoder_dim=16, decoder_depth=0, mode="simmim")


def make(**kw):
    torch.manual_seed(0)
    return MAE(MAEConfig(**{**CFG, **kw}))


def images(n=6, seed=1):
    return torch.rand(n, 3, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_uniform_attention_is_mask_blind_and_attention_avoiding_masked_keys_is_zero():
    visible = masks.token_ratio_mask(3, 16, 0.5, torch.Generator().manual_seed(0))
    uniform = torch.full((3, 2, 17, 17), 1 / 17)
    assert torch.allclose(mto.attention_to_masked([uniform], visible), torch.ones(3, 1))
    assert torch.allclose(mto.attention_to_masked([uniform], visible, relative=False), torch.full((3, 1), 8 / 17))
    keys = torch.nn.functional.pad(visible, (1, 0), value=True).float()  # attend only to visible keys and [CLS]
    avoiding = (keys / keys.sum(1, keepdim=True))[:, None, None, :].expand(3, 2, 17, 17)
    assert torch.allclose(mto.attention_to_masked([uniform, avoiding], visible), torch.tensor([[1.0, 0.0]] * 3))


def test_attention_to_masked_ignores_what_masked_queries_attend_to():
    visible = torch.tensor([[True, False, True, False]])
    att = torch.zeros(1, 1, 5, 5)
    att[0, 0, :, 0] = 1.0  # every query looks at [CLS] ...
    att[0, 0, 2] = 0.0
    att[0, 0, 2, 2] = 1.0  # ... except the masked query at patch 1, which looks at itself (a masked key)
    assert mto.attention_to_masked([att], visible).item() == 0.0


def test_attention_received_counts_visible_queries_only():
    visible = torch.tensor([[True, False]])
    att = torch.zeros(1, 1, 3, 3)
    att[0, 0, 0, 2] = 1.0  # [CLS] → masked patch 1
    att[0, 0, 1, 1] = 1.0  # visible patch 0 → itself
    att[0, 0, 2, 1] = 1.0  # masked patch 1 → patch 0 (not counted: a masked query)
    assert torch.allclose(mto.attention_received(att, visible), torch.tensor([[0.5, 0.5]]))


def test_mask_token_correlation_is_one_for_a_data_like_token_and_zero_for_an_orthogonal_one():
    model = make()
    x = torch.full((2, 3, 8, 8), 0.3)  # every patch embeds to the same vector
    visible = torch.ones(2, 16, dtype=torch.bool)
    patch = model.patch_embed(x)[0, 0].detach()
    with torch.no_grad():
        model.enc_mask_token.copy_(2.0 * patch)
    assert torch.allclose(mto.mask_token_correlation(model, x, visible), torch.ones(2), atol=1e-5)
    other = torch.randn(16)
    other -= (other @ patch) / (patch @ patch) * patch
    with torch.no_grad():
        model.enc_mask_token.copy_(other)
    assert torch.allclose(mto.mask_token_correlation(model, x, visible), torch.zeros(2), atol=1e-6)


def test_mto_objective_off_is_plain_simmim_with_the_same_masks():
    x = images()
    model = make()
    plain = mto.MTOObjective(0.5, torch.Generator().manual_seed(3))(model, x)
    visible = masks.token_ratio_mask(len(x), 16, 0.5, torch.Generator().manual_seed(3))
    assert torch.allclose(plain["loss"], model(x, token_mask=visible)[0], atol=1e-6)
    weighted = mto.MTOObjective(0.5, torch.Generator().manual_seed(3), layers=1, mto=True, sparsity_weight=1.0,
                                singularity_weight=1.0)(model, x)
    # the same masks: the sparsity term is block 1's attention before recalibration, so it equals plain SimMIM's
    assert weighted["attention"].item() == pytest.approx(plain["attention"].item(), rel=1e-5)
    assert weighted["correlation"].item() == pytest.approx(plain["correlation"].item(), rel=1e-5)
    assert weighted["loss"].item() == pytest.approx(
        (weighted["pretext"] + weighted["attention"] + weighted["correlation"]).item(), rel=1e-5)
    # ... and the reconstruction differs, because the first blocks ran recalibrated
    assert weighted["pretext"].item() != pytest.approx(plain["pretext"].item(), abs=1e-7)


def test_recalibrate_on_a_hand_made_map():
    visible = torch.tensor([[True, False, True]])  # T = 4: [CLS], patch 0 (visible), 1 (masked), 2 (visible)
    att = torch.tensor([[0.1, 0.2, 0.6, 0.1],
                        [0.25, 0.25, 0.25, 0.25],
                        [0.0, 0.5, 0.5, 0.0],  # the masked query: left as it is
                        [0.4, 0.0, 0.4, 0.2]])[None, None]
    out = mto.recalibrate(att, visible)[0, 0]
    assert torch.allclose(out[0], torch.tensor([0.25, 0.5, 0.0, 0.25]))
    assert torch.allclose(out[1], torch.tensor([1 / 3, 1 / 3, 0.0, 1 / 3]))
    assert torch.allclose(out[2], att[0, 0, 2])
    assert torch.allclose(out[3], torch.tensor([2 / 3, 0.0, 0.0, 1 / 3]))
    every = torch.ones(1, 3, dtype=torch.bool)
    assert torch.allclose(mto.recalibrate(att, every), att)


def test_attention_entropy_and_heterogeneity_on_hand_made_maps():
    visible = torch.tensor([[True, False, False]])  # queries: [CLS] and patch 0 visible, patches 1, 2 masked
    uniform = torch.full((1, 2, 4, 4), 0.25)
    one_hot = torch.zeros(1, 2, 4, 4)
    one_hot[..., 0] = 1.0
    mixed = uniform.clone()
    mixed[:, :, :2] = one_hot[:, :, :2]  # visible queries attend to one key, masked queries uniformly
    masked_h, visible_h = mto.attention_entropy(mixed, visible)
    assert torch.allclose(masked_h, torch.ones(1)) and torch.allclose(visible_h, torch.zeros(1), atol=1e-6)
    score = mto.heterogeneity([uniform, one_hot, mixed], visible)
    assert score.shape == (1, 3) and torch.allclose(score, torch.tensor([[0.0, 0.0, 1.0]]), atol=1e-6)


def test_recalibrated_hook_zeroes_visible_to_masked_attention_in_the_first_blocks_only():
    model = make()
    x = images(3)
    visible = masks.token_ratio_mask(3, 16, 0.5, torch.Generator().manual_seed(0))
    plain = model.forward_encoder(x, visible, return_attention=True)
    raw = []
    with torch.no_grad(), mto.recalibrated(model, visible, 1, raw):
        enc = model.forward_encoder(x, visible, return_attention=True)
    shares = mto.attention_to_masked(enc.attention, visible)
    assert torch.allclose(shares[:, 0], torch.zeros(3), atol=1e-6) and (shares[:, 1] > 0.1).all()
    assert len(raw) == 1 and torch.allclose(raw[0], plain.attention[0], atol=1e-6)
    assert model.blocks[0].attn.map_fn is None  # the hook is gone after the context


def test_steps_to_target_interval():
    steps = [0, 10, 20]
    base = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [1, 1, 0, 1]], dtype=torch.float)  # reaches 0.75 at 20
    fast = torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]], dtype=torch.float)  # at 10
    out = mto.steps_to_target_interval(steps, base, fast, resamples=500)
    assert out["target"] == 0.75 and out["baseline_steps"] == 20.0 and out["method_steps"] == 10.0
    assert out["low"] == -10.0 and out["high"] <= 0.0  # a resample whose target is 0 is reached at step 0 by both
    same = mto.steps_to_target_interval(steps, base, base, resamples=200)
    assert same["low"] == same["high"] == 0.0
    never = mto.steps_to_target_interval(steps, base, torch.zeros(3, 4), resamples=200)
    assert never["method_steps"] == 30.0
    with pytest.raises(ValueError):
        mto.steps_to_target_interval(steps, base, fast[:2])


def train_with(x, steps=60, **kw):
    model = make()
    objective = mto.MTOObjective(0.5, torch.Generator().manual_seed(1), layers=1, **kw)
    history = train.fit(model, x, None, steps, batch_size=8, lr=3e-3, loss_fn=objective, device="cpu",
                        progress=False)
    return model, history


def test_sparsity_term_teaches_visible_tokens_to_ignore_masked_tokens():
    x = images(32)
    visible = masks.token_ratio_mask(32, 16, 0.5, torch.Generator().manual_seed(2))
    plain = mto.measure(train_with(x)[0], x, visible)["attention"][:, 0].mean().item()
    sparse = mto.measure(train_with(x, mto=True, sparsity_weight=1.0)[0], x, visible)["attention"][:, 0].mean().item()
    assert sparse < 0.2 < plain


def test_singularity_term_makes_the_mask_token_orthogonal_to_the_data():
    x = images(32)
    visible = masks.token_ratio_mask(32, 16, 0.5, torch.Generator().manual_seed(2))
    plain, history = train_with(x, steps=30)
    singular, _ = train_with(x, steps=30, mto=True, singularity_weight=1.0)
    correlation = {k: mto.measure(m, x, visible)["correlation"].mean().item() for k, m in
                   [("plain", plain), ("singular", singular)]}
    assert correlation["singular"] < 0.5 * correlation["plain"]
    assert set(history.metrics) == {"pretext", "attention", "correlation"} and len(history.metrics["pretext"]) == 30


def test_measure_returns_per_image_values_at_fits_checkpoints():
    model = make()
    x = images(5)
    visible = masks.token_ratio_mask(5, 16, 0.5, torch.Generator().manual_seed(0))
    out = mto.measure(model, x, visible, batch_size=2)
    assert out["attention"].shape == (5, 2) and out["heterogeneity"].shape == (5, 2) and out["correlation"].shape == (5,) and out["pretext"].shape == (5,)
    history = train.fit(model, x, None, 7, batch_size=2, loss_fn=mto.MTOObjective(0.5, torch.Generator().manual_seed(0)),
                        device="cpu", progress=False,
                        checkpoints={"at": [0, 3, 7], "fn": lambda m, step: mto.measure(m, x, visible)["pretext"]})
    assert sorted(history.checkpoints) == [0, 3, 7] and history.checkpoints[7].shape == (5,)
    assert not torch.equal(history.checkpoints[0], history.checkpoints[7])


def test_mto_needs_a_mask_token_in_the_encoder():
    model = make(mode="mae", decoder_depth=1)
    with pytest.raises(ValueError, match="simmim"):
        mto.MTOObjective(0.5, torch.Generator())(model, images(2))
    with pytest.raises(ValueError, match="layers"):
        mto.MTOObjective(0.5, torch.Generator(), layers=0)


def test_steps_to_target():
    assert mto.steps_to_target([0, 10, 20], [0.1, 0.5, 0.9], 0.5) == 10.0
    assert mto.steps_to_target([0, 10, 20], [0.3, 0.2, 0.1], 0.15, higher=False) == 20.0
    assert mto.steps_to_target([0, 10], [0.1, 0.2], 0.5, not_reached=11.0) == 11.0
    with pytest.raises(ValueError):
        mto.steps_to_target([0], [0.1, 0.2], 0.5)
