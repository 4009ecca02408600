import torch

from companion import masks
from companion.methods.diffusion_editing import maskmark


def small_model():
    torch.manual_seed(0)
    return maskmark.MaskMark(bits=8, channels=8, depth=1, target_psnr=30.0, tile=4)


def test_splice_puts_the_watermark_inside_the_mask_only():
    x, wm = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 8, 8)
    m = masks.free_form(2, 8, 0.25, torch.Generator().manual_seed(0))
    out = maskmark.splice(x, wm, m)
    assert torch.equal(out, m.expand_as(out).float())


def test_masked_objective_trains_decoder_and_localiser_and_is_seeded():
    model = small_model()
    pool = maskmark.mask_pool(6, 8, 0.1, torch.Generator().manual_seed(0))
    assert pool.shape == (6, 1, 8, 8) and pool.dtype == torch.bool
    x = torch.rand(4, 3, 8, 8)
    out = maskmark.WatermarkObjective("masked", 1, pool)(model, x)
    out["loss"].backward()
    for part in (model.encoder, model.decoder, model.localiser):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    model.zero_grad()
    again = maskmark.WatermarkObjective("masked", 1, pool)(model, x)
    assert torch.allclose(out["loss"], again["loss"])


def test_global_objective_leaves_the_localiser_untouched_unless_detecting():
    model = small_model()
    x = torch.rand(4, 3, 8, 8)
    maskmark.WatermarkObjective("global", 0)(model, x)["loss"].backward()
    assert all(p.grad is None for p in model.localiser.parameters())
    out = maskmark.WatermarkObjective("global", 0, detect=True)(model, x)
    out["loss"].backward()
    assert "loc" in out and any(p.grad is not None for p in model.localiser.parameters())


def test_evaluate_true_region_scores_iou_one_and_whole_image_scores_the_share():
    model = small_model().eval()
    x, msg = torch.rand(5, 3, 8, 8), torch.randint(0, 2, (5, 8)).float()
    region = masks.free_form(5, 8, 0.25, torch.Generator().manual_seed(2))
    true = maskmark.evaluate(model, x, msg, region, "noise", 0.01, "true")
    whole = maskmark.evaluate(model, x, msg, region, "noise", 0.01, "whole")
    assert torch.allclose(true["iou"], torch.ones(5))
    assert torch.allclose(whole["iou"], torch.full((5,), 0.25))
    assert torch.allclose(true["psnr"], torch.full((5,), 30.0), atol=1e-3)
    assert true["bit_acc"].shape == (5,)


def test_evaluate_shares_keeps_the_image_order():
    model = small_model().eval()
    x, msg = torch.rand(7, 3, 8, 8), torch.randint(0, 2, (7, 8)).float()
    regions = {0.5: masks.free_form(7, 8, 0.5, torch.Generator().manual_seed(0))}
    attacks = {"identity": 0.0, "blur": 0.5}
    res = maskmark.evaluate_shares(model, x, msg, regions, attacks, "true")
    for i in range(7):
        kind = list(attacks)[i % 2]
        one = maskmark.evaluate(model, x[i:i + 1], msg[i:i + 1], regions[0.5][i:i + 1], kind, attacks[kind], "true")
        assert torch.allclose(res["bit_acc"][0.5][i], one["bit_acc"][0])


def test_detection_does_not_change_the_encoder_gradient():
    x = torch.rand(4, 3, 8, 8)
    grads = []
    for detect in (False, True):
        model = small_model()
        maskmark.WatermarkObjective("global", 0, detect=detect)(model, x)["loss"].backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters()]))
    assert torch.allclose(grads[0], grads[1])
