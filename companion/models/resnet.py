"""ResNet-50 (He et al. 2016, the torchvision "V1.5" variant) built from standard torch layers, loading the
public torchvision ImageNet weights without importing torchvision.

The module tree mirrors torchvision's ``resnet50`` so its state dict has the same keys and shapes: ``conv1``
(7x7/2) - ``bn1`` - ReLU - 3x3/2 max pool, then ``layer1`` .. ``layer4`` with 3, 4, 6, 3 :class:`Bottleneck`
blocks of widths 64, 128, 256, 512 (output 4x the width; the stride sits on the 3x3 conv, as in V1.5), each
stage's first block with a ``downsample`` 1x1 conv + BN shortcut; then global average pool and ``fc``.
The interface is :mod:`companion.models.cnn`'s (``forward_features`` / ``forward_head`` / ``forward``), and
``torch.fx.symbolic_trace`` traces it, so :mod:`companion.masking.layer` applies to it.

The model expects ImageNet-normalised input (:func:`companion.data.foreground.normalize`, applied outside it).
:func:`load_torchvision_weights` loads ``resnet50-0676ba61.pth`` (torchvision's ``IMAGENET1K_V1``, the weights
the layer-masking paper's code loads), prepared by ``python data_scripts/foreground.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..data.files import DataError, foreground_prepare_command, resnet50_weights_file
from .cnn import _Classifier

__all__ = ["Bottleneck", "ResNet50", "resnet50", "load_torchvision_weights"]


class Bottleneck(nn.Module):
    """relu(bn3(conv3(relu(bn2(conv2(relu(bn1(conv1(x)))))))) + shortcut(x)): 1x1 reduce to ``planes``,
    3x3 (with the stride), 1x1 expand to ``4 * planes``. The shortcut is ``downsample`` (1x1 conv with the
    stride + BN) when given, else the identity. (N, in_channels, H, W) -> (N, 4 * planes, H / stride, W / stride).
    """

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        out = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample if downsample is not None else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + self.downsample(x))


class ResNet50(_Classifier):
    """ResNet-50 with torchvision's parameter names. (N, 3, H, W) -> features (N, 2048, H/32, W/32) -> logits."""

    def __init__(self, num_classes: int = 1000, blocks: tuple[int, ...] = (3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        prev = 64
        for i, (planes, n_blocks) in enumerate(zip((64, 128, 256, 512), blocks)):
            stride = 1 if i == 0 else 2
            out = planes * Bottleneck.expansion
            downsample = nn.Sequential(nn.Conv2d(prev, out, 1, stride=stride, bias=False), nn.BatchNorm2d(out))
            stage = [Bottleneck(prev, planes, stride, downsample)]
            stage += [Bottleneck(out, planes) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
            prev = out
        self._build_head(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalised images -> (N, 2048, H/32, W/32) (sizes rounded up at each stride)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


def resnet50(num_classes: int = 1000) -> ResNet50:
    """A randomly initialised ResNet-50 (about 25.6M parameters at 1000 classes)."""
    return ResNet50(num_classes)


def load_torchvision_weights(model: nn.Module, path: str | Path | None = None) -> nn.Module:
    """Load torchvision's ResNet-50 state dict into ``model`` (strict) and return it.

    ``path`` defaults to ``<data root>/torchvision/resnet50-0676ba61.pth`` (``$COMPANION_DATA``, default
    ``~/.cache/companion``). The file is read with ``torch.load(weights_only=True)``. A missing or unreadable
    file, or one whose keys or shapes differ from the model's (a missing key, an unexpected key, a shape
    mismatch), raises :class:`~companion.data.DataError` with a one-line message naming the command that
    prepares the weights. The file's SHA-256 is checked by the data script when it downloads it, not here.
    """
    path = Path(path) if path is not None else resnet50_weights_file()
    default = resnet50_weights_file(path.parent.parent)
    prepare = foreground_prepare_command(path.parent.parent) if path == default else \
        f"{foreground_prepare_command()}  (or pass the path of torchvision's resnet50-0676ba61.pth)"
    if not path.is_file():
        raise DataError(f"ResNet-50 weights {path} are missing; prepare them: {prepare}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, not a torch file, unpickling refused: all mean "damaged"
        reason = " ".join(str(exc).split())[:160] or type(exc).__name__
        raise DataError(f"ResNet-50 weights {path} cannot be read ({reason}); prepare them again: {prepare}") \
            from None
    if not isinstance(state, dict):
        raise DataError(f"ResNet-50 weights {path} hold a {type(state).__name__}, not a state dict; "
                        f"prepare them again: {prepare}")
    expected = model.state_dict()
    counters = {k: v for k, v in expected.items() if k.endswith("num_batches_tracked")}  # absent in old files
    state = {**counters, **state}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if tuple(state[k].shape) != tuple(expected[k].shape))
    problems = [f"{len(keys)} {what} (first: {keys[0]})"
                for what, keys in (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong))
                if keys]
    if problems:
        raise DataError(f"ResNet-50 weights {path} do not fit the model: keys {', '.join(problems)}; "
                        f"prepare them again: {prepare}")
    model.load_state_dict(state, strict=True)
    return model
