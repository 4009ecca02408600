import pytest
import torch
import torch.nn.functional as F

from companion import eval as evaluation


def test_count_flops_counts_matmuls_and_attention():
    lin = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(3, 8)
    assert evaluation.count_flops(lambda: lin(x)) == 2 * 3 * 8 * 4
    q = torch.randn(1, 2, 5, 4)
    assert evaluation.count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * (2 * 1 * 2 * 5 * 5 * 4)


def test_training_step_flops_is_deterministic_and_clears_gradients():
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 1))
    loss_fn = lambda m, x, y: m(x).square().mean()
    x = torch.randn(4, 6)
    a = evaluation.training_step_flops(model, loss_fn, x)
    # forward 2·4·(6·5 + 5·1); backward: both weight gradients, and the input gradient of the second layer only
    assert a == 2 * 4 * (6 * 5 + 5 * 1) + 2 * 4 * (6 * 5 + 5 * 1) + 2 * 4 * 5 * 1
    assert a == evaluation.training_step_flops(model, loss_fn, x)
    assert all(p.grad is None for p in model.parameters())


def test_mean_average_precision_by_hand():
    labels = torch.tensor([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.1, 0.3], [0.5, 0.4]])
    # class 0: ranking 0.9(+) 0.5(-) 0.2(-) 0.1(+) → AP = (1 + 2/4) / 2; class 1: 0.8(+) 0.4(-) 0.3(+) → (1 + 2/3) / 2
    expected = ((1 + 2 / 4) / 2 + (1 + 2 / 3) / 2) / 2
    assert abs(evaluation.mean_average_precision(scores, labels) - expected) < 1e-9
    # a class with no positive is left out rather than scored 0
    with_empty = torch.cat([labels, torch.zeros(4, 1, dtype=labels.dtype)], 1)
    assert evaluation.mean_average_precision(torch.cat([scores, torch.rand(4, 1)], 1), with_empty) == \
        evaluation.mean_average_precision(scores, labels)


def test_bit_accuracy_and_iou():
    logits = torch.tensor([[2.0, -1.0, 0.5, -3.0]])
    assert evaluation.bit_accuracy(logits, torch.tensor([[1, 0, 0, 0]])).tolist() == [0.75]
    a = torch.zeros(2, 4, 4, dtype=torch.bool)
    b = torch.zeros(2, 4, 4, dtype=torch.bool)
    a[0, :2], b[0, 1:3] = True, True  # 4 shared of 12 pixels
    assert evaluation.mask_iou(a, b).tolist() == pytest.approx([4 / 12, 1.0])


def test_noc_and_iou_at_k():
    ious = torch.tensor([[0.5, 0.86, 0.95], [0.2, 0.3, 0.4], [0.91, 0.6, 0.92]])
    assert evaluation.noc(ious, 0.85).tolist() == [2.0, 3.0, 1.0]
    assert evaluation.noc(ious, 0.90).tolist() == [3.0, 3.0, 1.0]
    assert evaluation.iou_at_k(ious, 1).tolist() == pytest.approx([0.5, 0.2, 0.91])


def test_layer_flops_and_active_channel_flops_against_a_hand_count():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1, bias=False)
    model = torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(6, 2))
    x = torch.randn(3, 4, 5, 5)
    dense = evaluation.layer_flops(model, x, {"conv": conv, "fc": model[4]})
    # 2 FLOPs per multiply-add: conv 5·5 positions · 6 filters · 4·3·3 weights; linear 6·2
    assert dense == {"conv": 2 * 25 * 6 * 36, "fc": 2 * 6 * 2}
    total = evaluation.count_flops(lambda: model(x[:1]))
    assert total == sum(dense.values())
    # input 0: half the conv's input channels and 3 of 6 outputs (so 3 of the linear's inputs); input 1: all
    flops = evaluation.active_channel_flops(total, dense, {"conv": torch.tensor([0.5, 1.0]), "fc": torch.tensor([0.5, 1.0])},
                                            {"conv": torch.tensor([0.5, 1.0])})
    assert flops.tolist() == [2 * 25 * 3 * 2 * 9 + 2 * 3 * 2, total]
    with pytest.raises(ValueError, match="did not run"):
        evaluation.layer_flops(model, x, {"other": torch.nn.Linear(2, 2)})


def test_psnr_matches_scikit_image_and_masks():
    from skimage.metrics import peak_signal_noise_ratio

    from companion.eval import psnr

    g = torch.Generator().manual_seed(0)
    a = torch.rand(3, 3, 8, 8, generator=g)
    b = (a + 0.1 * torch.randn(3, 3, 8, 8, generator=g)).clamp(0, 1)
    expected = [peak_signal_noise_ratio(a[i].numpy(), b[i].numpy(), data_range=1.0) for i in range(3)]
    assert torch.allclose(psnr(a, b), torch.tensor(expected, dtype=torch.float32), atol=1e-4)
    mask = torch.zeros(3, 1, 8, 8, dtype=torch.bool)
    mask[..., :4] = True
    b2 = b.clone()
    b2[..., 4:] = 0  # changes outside the mask do not count
    assert torch.allclose(psnr(a, b, mask=mask), psnr(a, b2, mask=mask))


def test_frechet_distance_zero_for_equal_sets_and_the_mean_shift_term():
    from companion.eval import frechet_distance

    f = torch.randn(400, 4, generator=torch.Generator().manual_seed(0))
    assert abs(frechet_distance(f, f)) < 1e-6
    assert frechet_distance(f, f + 2.0) == pytest.approx(4 * 4.0, rel=1e-6)  # covariances equal: ‖Δμ‖² only


def test_denoising_loss_by_bucket_is_paired_and_zero_for_the_true_noise():
    from companion.diffusion.gaussian import Schedule
    from companion.eval import denoising_loss_by_bucket

    sched = Schedule(40)
    x0 = torch.zeros(5, 1, 4, 4)  # x_t = √(1−ᾱ) ε: the oracle reads ε back
    oracle = lambda x, t, c: x / (1 - sched._ab(t, x)).sqrt()  # noqa: E731
    zero = lambda x, t, c: torch.zeros_like(x)  # noqa: E731
    a = denoising_loss_by_bucket(oracle, x0, sched, buckets=4, generator=torch.Generator().manual_seed(3))
    b = denoising_loss_by_bucket(zero, x0, sched, buckets=4, generator=torch.Generator().manual_seed(3))
    assert a.shape == (5, 4) and a.abs().max() < 1e-8 and b.min() > 0
