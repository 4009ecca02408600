"""Small, readable CNNs built from standard torch layers only (timm-style interface).

Every classifier here has ``forward_features(x)`` (the last feature map, before pooling),
``forward_head(features)`` (global average pool, flatten, linear) and ``forward(x)`` = head(features).
The layers are plain attributes / ``nn.Sequential`` containers so ``torch.fx.symbolic_trace`` can trace
them, which is what :mod:`companion.masking.layer` needs.

- :class:`SmallCNN`: conv3x3-BN-ReLU stages with 2x2 max pooling in between; trains in seconds on a CPU
  at 32x32.
- :class:`ResNet` / :class:`BasicBlock`: the ResNet-18 family with a 3x3 stem and no stem pooling (the
  CIFAR-style variant); :func:`resnet18_like` is the ResNet-18-shaped one used in the benchmarks.
"""

from __future__ import annotations

import torch
import torch.nn as nn


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv (no bias) -> BatchNorm -> ReLU; keeps the spatial size when ``stride`` is 1."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


class _Classifier(nn.Module):
    """Shared head: global average pool -> flatten -> linear. Subclasses define ``forward_features``."""

    def _build_head(self, num_features: int, num_classes: int) -> None:
        """Global average pool -> flatten -> linear; then initialise all weights."""
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(num_features, num_classes)
        self.num_features = num_features
        _init_weights(self)

    def forward_head(self, feats: torch.Tensor) -> torch.Tensor:
        """(N, C, h, w) feature map -> (N, num_classes) logits."""
        return self.fc(self.flatten(self.pool(feats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) images -> (N, num_classes) logits."""
        return self.forward_head(self.forward_features(x))


class SmallCNN(_Classifier):
    """A few conv3x3-BN-ReLU stages, one per entry of ``widths``, with MaxPool2d(2) between stages. An entry may
    be a tuple of widths: that stage is several blocks, VGG-style (``widths=((8, 8), (16, 16), (32, 32))``).

    With the default widths a 32x32 input gives an (N, 64, 8, 8) feature map; about 24k parameters.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 4,
                 widths: tuple[int | tuple[int, ...], ...] = (16, 32, 64)):
        super().__init__()
        layers: list[nn.Module] = []
        prev = in_channels
        for i, stage in enumerate(widths):
            if i > 0:
                layers.append(nn.MaxPool2d(2))
            for width in (stage if isinstance(stage, tuple) else (stage,)):
                layers.append(conv_bn_relu(prev, width))
                prev = width
        self.features = nn.Sequential(*layers)
        self._build_head(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, widths[-1], H / 2**(len(widths)-1), W / 2**(len(widths)-1))."""
        return self.features(x)


class BasicBlock(nn.Module):
    """The ResNet basic block: relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x)).

    The shortcut is the identity, or a strided 1x1 conv + BN when the stride or the width changes.
    (N, in_channels, H, W) -> (N, out_channels, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()
        self.act2 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + self.shortcut(x))


class ResNet(_Classifier):
    """A ResNet of :class:`BasicBlock` stages: 3x3 stem conv-BN-ReLU (no stem pooling), then one stage
    per entry of ``widths`` with ``blocks[i]`` blocks; every stage after the first halves the resolution.

    Feature map: (N, widths[-1], H / (stem_stride * 2**(len(widths)-1)), same for W).
    """

    def __init__(
        self,
        in_channels: int = 3,
        num_classes: int = 10,
        widths: tuple[int, ...] = (64, 128, 256, 512),
        blocks: tuple[int, ...] = (2, 2, 2, 2),
        stem_stride: int = 1,
    ):
        super().__init__()
        if len(widths) != len(blocks):
            raise ValueError(f"widths {widths} and blocks {blocks} must have the same length")
        self.stem = conv_bn_relu(in_channels, widths[0], stride=stem_stride)
        stages: list[nn.Module] = []
        prev = widths[0]
        for i, (width, n_blocks) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(prev, width, stride)]
            stage += [BasicBlock(width, width) for _ in range(n_blocks - 1)]
            stages.append(nn.Sequential(*stage))
            prev = width
        self.stages = nn.Sequential(*stages)
        self._build_head(prev, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(N, in_channels, H, W) -> (N, widths[-1], h, w)."""
        return self.stages(self.stem(x))


def resnet18_like(num_classes: int, in_channels: int = 3) -> ResNet:
    """ResNet-18 shape (widths 64/128/256/512, two basic blocks per stage) with a 3x3 stride-1 stem and no
    stem pooling, as used in the layer-masking benchmark; about 11.2M parameters."""
    return ResNet(in_channels, num_classes, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), stem_stride=1)
