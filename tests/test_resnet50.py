"""The package's ResNet-50: torchvision's state-dict layout (written out here from the architecture, not read
from torchvision), strict weight loading, and layer masking through its fx trace."""

import pytest
import torch

from companion.data import DataError
from companion.masking.layer import layer_masked
from companion.models import load_torchvision_weights, resnet50
from companion.models.resnet import ResNet50


def expected_shapes(num_classes=1000):
    """torchvision's ResNet-50 keys and shapes, from the architecture: a 7x7 stem conv of 64 channels with BN;
    stages of 3, 4, 6, 3 bottlenecks of width 64, 128, 256, 512 expanding 4x (1x1, 3x3, 1x1 convs, each with
    BN); the first block of each stage has a ``downsample`` 1x1 conv + BN; a 2048 -> classes linear head."""
    shapes = {}

    def bn(name, c):
        shapes.update({f"{name}.{k}": (c,) for k in ("weight", "bias", "running_mean", "running_var")})
        shapes[f"{name}.num_batches_tracked"] = ()

    shapes["conv1.weight"] = (64, 3, 7, 7)
    bn("bn1", 64)
    c_in = 64
    for stage, (width, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        for b in range(blocks):
            p = f"layer{stage}.{b}"
            shapes[f"{p}.conv1.weight"] = (width, c_in, 1, 1)
            shapes[f"{p}.conv2.weight"] = (width, width, 3, 3)
            shapes[f"{p}.conv3.weight"] = (4 * width, width, 1, 1)
            bn(f"{p}.bn1", width)
            bn(f"{p}.bn2", width)
            bn(f"{p}.bn3", 4 * width)
            if b == 0:
                shapes[f"{p}.downsample.0.weight"] = (4 * width, c_in, 1, 1)
                bn(f"{p}.downsample.1", 4 * width)
            c_in = 4 * width
    shapes["fc.weight"] = (num_classes, 2048)
    shapes["fc.bias"] = (num_classes,)
    return shapes


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return resnet50(num_classes=1000).eval()


def test_state_dict_has_torchvisions_keys_and_shapes(model):
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert got == expected_shapes()
    # the parameter count torchvision documents for ResNet-50
    assert sum(p.numel() for p in model.parameters()) == 25_557_032


def test_features_head_and_forward(model):
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        feats = model.forward_features(x)
        assert feats.shape == (2, 2048, 2, 2)
        assert torch.equal(model.forward_head(feats), model(x))
    assert model(x).shape == (2, 1000)
    assert resnet50(num_classes=7)(x).shape == (2, 7)


def test_the_stride_sits_on_the_3x3_conv(model):
    """torchvision's V1.5 bottleneck: the first 1x1 conv keeps the resolution, the 3x3 conv strides."""
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.downsample[0].stride == (2, 2)
    assert model.conv1.stride == (2, 2) and model.maxpool.stride == 2


def test_load_round_trip(model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save(model.state_dict(), path)
    fresh = load_torchvision_weights(resnet50().eval(), path)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_old_files_without_batch_counters_load(model, tmp_path):
    path = tmp_path / "w.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    fresh = load_torchvision_weights(resnet50(), path)
    assert torch.equal(fresh.fc.weight, model.fc.weight)


@pytest.mark.parametrize("damage, words", [
    (lambda s: s.pop("layer3.2.conv2.weight"), "1 missing (first: layer3.2.conv2.weight)"),
    (lambda s: s.__setitem__("head.weight", torch.zeros(3)), "1 unexpected (first: head.weight)"),
    (lambda s: s.__setitem__("fc.weight", torch.zeros(10, 2048)), "1 of another shape (first: fc.weight)"),
])
def test_loading_is_strict(model, tmp_path, damage, words):
    state = dict(model.state_dict())
    damage(state)
    path = tmp_path / "w.pth"
    torch.save(state, path)
    with pytest.raises(DataError) as err:
        load_torchvision_weights(resnet50(), path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_missing_or_damaged_file_names_the_script(tmp_path, monkeypatch):
    monkeypatch.setenv("COMPANION_DATA", str(tmp_path))
    with pytest.raises(DataError, match=r"resnet50-0676ba61\.pth are missing; prepare them: "
                                        r"python data_scripts/foreground\.py$"):
        load_torchvision_weights(resnet50())
    other = tmp_path / "elsewhere"
    with pytest.raises(DataError, match=f"--dest {other}$"):
        load_torchvision_weights(resnet50(), other / "torchvision" / "resnet50-0676ba61.pth")
    bad = tmp_path / "torchvision" / "resnet50-0676ba61.pth"
    bad.parent.mkdir()
    bad.write_bytes(b"not a torch file")
    with pytest.raises(DataError, match="cannot be read") as err:
        load_torchvision_weights(resnet50())
    assert "\n" not in str(err.value)


def test_traces_and_layer_masks(model):
    """torch.fx traces it and layer masking applies: masked pixels have no influence, a full mask changes
    nothing, and the optimised transform agrees with the literal one."""
    assert isinstance(model, ResNet50)
    torch.fx.symbolic_trace(model)
    torch.manual_seed(1)
    x = torch.randn(2, 3, 64, 64)
    mask = torch.zeros(2, 1, 64, 64, dtype=torch.bool)
    mask[0, :, 8:40, 10:50] = True
    mask[1, :, 30:, :20] = True
    masked = layer_masked(model)
    with torch.no_grad():
        y = masked(x, mask)
        noise = torch.where(mask, x, torch.randn_like(x) * 10)
        assert torch.allclose(masked(noise, mask), y, rtol=1e-5, atol=1e-5)
        assert torch.allclose(masked(x, torch.ones_like(mask)), model(x), rtol=1e-5, atol=1e-5)
        assert torch.allclose(layer_masked(model, reference=True)(x, mask), y, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(y, model(x), atol=1e-3)
